"""Numbers and durations as people read them, for any message."""

from __future__ import annotations

import math
from datetime import timedelta

from inference.queues.eta import Eta, rounded_seconds


def format_duration(delta: timedelta) -> str:
    """'3 h 12 min', '45 min', rounded up to the minute so that it never says 0."""
    minutes = max(1, math.ceil(delta.total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def about(seconds: float) -> str:
    """An estimate as people read it: 'about 12 s', 'about 2 min', 'about 1 h 20 min'."""
    rounded = rounded_seconds(seconds)
    if rounded < 60:
        return f"about {rounded} s"
    hours, minutes = divmod(rounded // 60, 60)
    if not hours:
        return f"about {minutes} min"
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"


def eta_words(eta: Eta | None, *, waiting: bool) -> str:
    """' · starts in about 40 s' for a waiting job, ' · about 12 s left' for a running one; '' without an ETA."""
    if eta is None:
        return ""
    if waiting:
        return "" if eta.starts_in is None else f" · starts in {about(eta.starts_in)}"
    return f" · {about(eta.left)} left"


def counted(number: int, noun: str) -> str:
    """'1 step', '20 steps', '1,000 frames'."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def format_amount(value: int, *, like: int | None = None) -> str:
    """7,900,000 -> '7.9M'; with more digits where needed to tell `value` from `like` apart."""
    if value < 10_000:
        return f"{value:,}"
    scale, suffix = (1_000_000_000, "G") if value >= 1_000_000_000 else (1_000_000, "M")
    if value < 1_000_000:
        scale, suffix = 1_000, "k"
    for decimals in range(1, 4):
        text = f"{value / scale:.{decimals}f}"
        if like is None or text != f"{like / scale:.{decimals}f}":
            return text + suffix
    return f"{value:,}"
