"""What the limits tests share: settings, a server's effective limits, refusals, and hypothesis strategies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st

from bot.config import Settings
from bot.limits.checks import check_request
from bot.limits.server import (
    EffectiveLimits,
    LimitExceeded,
    ServerLimits,
)
from inference.requests import Request
from tests.bot.fakes import REGISTRY

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


MODEL_SETTINGS = Settings(_env_file=None, model=REGISTRY)  # type: ignore[call-arg]


EVENING = datetime(2026, 3, 14, 20, 48, tzinfo=UTC)


def limits(**server: object) -> EffectiveLimits:
    return EffectiveLimits.combine(ServerLimits(**server), SETTINGS)  # type: ignore[arg-type]


sizes = st.integers(32, 128).map(lambda n: n * 8)


prompts = st.sampled_from(["a cat", "a lighthouse at dusk", "gore", "a category of war crimes", "oil painting"])


def refusal(request: Request, effective: EffectiveLimits, *, used: int = 0, active: int = 0) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        check_request(request, effective, steps_used_today=used, active_jobs=active, now=EVENING)
    return caught.value
