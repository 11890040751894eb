"""Which Discord shards this bot process runs: STEPGRID_SHARD_COUNT and STEPGRID_SHARD_IDS, read and checked.

Discord sends a server's events to shard `(guild_id >> 22) % shard_count`, and direct messages to
shard 0. A process that runs some of the shards owns those servers: it answers their interactions,
recovers their jobs after a crash and holds their shards' locks on the database. Unset, the bot
runs every shard in one process and discord.py asks Discord how many (`GET /gateway/bot`).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SHARDS = 65536  # far beyond any bot; a typo (an extra digit) is named instead of opening thousands of sockets


def shard_of(guild_id: int | None, count: int) -> int:
    """The shard Discord sends a server's events to (direct messages: shard 0)."""
    return 0 if guild_id is None else (guild_id >> 22) % count


def spans(ids: tuple[int, ...]) -> str:
    """Shard ids as the setting writes them: (0, 1, 2, 5) -> "0-2,5"."""
    runs: list[list[int]] = []
    for shard in sorted(ids):
        if runs and runs[-1][1] == shard - 1:
            runs[-1][1] = shard
        else:
            runs.append([shard, shard])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


@dataclass(frozen=True)
class ShardRange:
    """The shards one process runs, out of `count` (every process of the bot uses the same count)."""

    count: int
    ids: tuple[int, ...]

    def owns(self, guild_id: int | None) -> bool:
        """Whether this process's shards receive that server's events (None: a direct message)."""
        return shard_of(guild_id, self.count) in self.ids

    @property
    def everything(self) -> bool:
        return len(self.ids) == self.count

    def __str__(self) -> str:
        return f"shard{'s' if len(self.ids) > 1 else ''} {spans(self.ids)} of {self.count}"


def checked_shard_count(value: int | None) -> int | None:
    """A shard count of 1..MAX_SHARDS, or None (unset: Discord's recommended count, all in this process)."""
    if value is None:
        return None
    if not 1 <= value <= MAX_SHARDS:
        raise ValueError(
            f"{value} is not a shard count; use the total number of shards across all processes (1 to {MAX_SHARDS}), "
            "or leave it unset to let Discord choose"
        )
    return value


def parse_shard_ids(value: str, count: int | None) -> tuple[int, ...]:
    """ "0-3", "4,5" or "0,2,4-7" as sorted shard ids under `count`; ValueError saying what to write otherwise."""
    example = 'write them as "0-1" or "0,2,4-7"'
    if count is None:
        raise ValueError("needs STEPGRID_SHARD_COUNT too (the total number of shards across all processes)")
    ids: set[int] = set()
    for part in value.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part!r} is not a shard id or a range of them; {example}")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ValueError(f"{part!r} runs backwards; write the lower shard first ({high}-{low})")
        if high >= count:
            raise ValueError(f"shard {high} is not one of the {count} shards; ids run from 0 to {count - 1}")
        overlap = ids.intersection(range(low, high + 1))
        if overlap:
            raise ValueError(f"shard {min(overlap)} is listed twice; {example}")
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))
