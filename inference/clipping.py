"""Quoting a value in a one-line message without echoing a huge one whole (standard library only)."""

from __future__ import annotations

# How much of a value someone typed (a member, or an operator in a setting) is quoted back.
MAX_ECHO = 60


def clip(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` characters with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """A value as a message quotes it (its repr), clipped: never the whole of a long input."""
    if isinstance(value, str):
        return repr(clip(value, limit))
    return clip(repr(value), limit)
