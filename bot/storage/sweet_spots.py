"""A server's own memory of where its grids settle: every step-ladder grid row's settle point, and per model ×
scheduler the middle settle step over the server's grids (what `/sweet-spots` shows and `learned_steps` uses).

The middle is taken over every remembered row, a row that did not settle ranking above every step count:
when most of a scheduler's grids did not settle there is no sweet spot to learn, not a flattering one from
the few that did. Of an even count it is the higher of the two middle rows (it errs toward more steps).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import SettlePoint
from bot.storage.writer import DatabaseWriter


@dataclass(frozen=True)
class SettledRow:
    """One grid row to remember: its index in the grid, scheduler, step counts and where it settled."""

    row_index: int
    scheduler: str
    ladder: tuple[int, ...]
    settle_step: int | None  # None: still changing at its last step count


@dataclass(frozen=True)
class SweetSpot:
    """A model × scheduler in one server: how many grid rows were remembered, how many settled, where."""

    model: str
    scheduler: str
    grids: int
    settled: int
    median: int | None  # the middle row's settle step; None when the middle row did not settle
    lowest: int | None  # the settled rows' range
    highest: int | None

    @property
    def not_settled(self) -> int:
        return self.grids - self.settled


class SweetSpots:
    """Record grid rows' settle points; read them back per server, model and scheduler."""

    def __init__(self, database: DatabaseWriter) -> None:
        self.database = database

    async def record(
        self, job_id: str, *, guild_id: int | None, model: str, width: int, height: int, rows: Sequence[SettledRow]
    ) -> int:
        """Remember a finished grid's rows (a row already remembered for this job is not added again).
        How many rows were added."""
        now = self.database.clock()

        async def insert(session: AsyncSession) -> int:
            known = set(await session.scalars(sa.select(SettlePoint.row_index).where(SettlePoint.job_id == job_id)))
            added = [
                SettlePoint(
                    job_id=job_id,
                    row_index=row.row_index,
                    guild_id=guild_id,
                    model=model,
                    scheduler=row.scheduler,
                    width=width,
                    height=height,
                    ladder=list(row.ladder),
                    settle_step=row.settle_step,
                    created_at=now,
                )
                for row in rows
                if row.row_index not in known
            ]
            session.add_all(added)
            return len(added)

        return await self.database.write(insert)

    async def for_server(self, guild_id: int | None) -> list[SweetSpot]:
        """Every model × scheduler this server's grids measured, by model, then most grids first."""
        query = (
            sa.select(SettlePoint.model, SettlePoint.scheduler, SettlePoint.settle_step, sa.func.count())
            .where(_in_guild(guild_id))
            .group_by(SettlePoint.model, SettlePoint.scheduler, SettlePoint.settle_step)
        )
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        counts: dict[tuple[str, str], dict[int | None, int]] = defaultdict(dict)
        for model, scheduler, step, count in rows:
            counts[str(model), str(scheduler)][None if step is None else int(step)] = int(count)
        spots = [sweet_spot(model, scheduler, steps) for (model, scheduler), steps in counts.items()]
        return sorted(spots, key=lambda spot: (spot.model, -spot.grids, spot.scheduler))

    async def for_scheduler(self, guild_id: int | None, model: str, scheduler: str) -> SweetSpot | None:
        """One model × scheduler in this server; None before any of its grids was remembered."""
        query = (
            sa.select(SettlePoint.settle_step, sa.func.count())
            .where(_in_guild(guild_id), SettlePoint.model == model, SettlePoint.scheduler == scheduler)
            .group_by(SettlePoint.settle_step)
        )
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        if not rows:
            return None
        return sweet_spot(model, scheduler, {None if step is None else int(step): int(count) for step, count in rows})


def sweet_spot(model: str, scheduler: str, counts: dict[int | None, int]) -> SweetSpot:
    """The figures of one model × scheduler from how many rows settled at each step (None: not settled)."""
    ordered = [step for step in sorted(counts, key=lambda s: (s is None, s or 0)) for _ in range(counts[step])]
    settled = [step for step in ordered if step is not None]
    return SweetSpot(
        model=model,
        scheduler=scheduler,
        grids=len(ordered),
        settled=len(settled),
        median=ordered[len(ordered) // 2],
        lowest=settled[0] if settled else None,
        highest=settled[-1] if settled else None,
    )


def _in_guild(guild_id: int | None) -> sa.ColumnElement[bool]:
    return SettlePoint.guild_id.is_(None) if guild_id is None else SettlePoint.guild_id == guild_id
