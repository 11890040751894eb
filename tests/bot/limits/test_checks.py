"""A request checked against a server's limits: every refusal names what it breaks, and only then."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import UserFacingError
from bot.limits.changes import validate_limit_changes
from bot.limits.checks import banned_word_in, check_request, compute_cost, next_quota_reset
from bot.limits.server import (
    EffectiveLimits,
    InvalidLimit,
    LimitExceeded,
    ServerLimits,
)
from inference.requests import SCHEDULER_NAMES, CompareStepsRequest, GenerateRequest, Request, total_steps
from tests.bot.limits.shared import EVENING, SETTINGS, limits, prompts, refusal, sizes


def test_too_many_steps_is_refused_naming_limit_asked_and_allowed() -> None:
    error = refusal(GenerateRequest(prompt="a cat", steps=50), limits(max_steps=40))

    assert str(error) == "This server allows at most 40 steps; you asked for 50."
    assert (error.limit, error.asked, error.allowed) == ("max_steps", 50, 40)
    assert isinstance(error, UserFacingError)


def test_a_grid_cell_with_too_many_steps_is_refused() -> None:
    error = refusal(CompareStepsRequest(prompt="a cat", steps=(10, 20, 30)), limits(max_steps=20))

    assert str(error) == "This server allows at most 20 steps; you asked for 30."


def test_a_grid_with_too_many_cells_is_refused() -> None:
    request = CompareStepsRequest(prompt="a cat", steps=(1, 2, 3, 4, 5, 6, 7, 8))

    error = refusal(request, limits(max_grid_cells=6))

    assert str(error) == "This server allows grids of at most 6 cells; you asked for 8."


def test_a_scheduler_the_server_does_not_allow_is_refused() -> None:
    error = refusal(GenerateRequest(prompt="a cat", scheduler="Heun"), limits(allowed_schedulers=("Euler", "DDIM")))

    assert str(error) == "This server doesn't allow the Heun scheduler; it allows: Euler, DDIM."


def test_an_image_too_large_is_refused() -> None:
    error = refusal(GenerateRequest(prompt="a cat", width=1024, height=512), limits(max_image_size=768))

    assert str(error) == "This server allows images of at most 768×768; you asked for 1024×512."


def test_a_request_over_the_compute_budget_shows_the_arithmetic() -> None:
    request = CompareStepsRequest(prompt="a cat")  # 5+10+20+30+40+50 = 155 steps

    error = refusal(request, limits(max_compute_per_request=5_200_000))

    assert str(error) == (
        "This request needs 40.6M pixel-steps (512×512 × 155 steps over 6 cells); this server allows 5.2M per request."
    )
    assert (error.asked, error.allowed) == (512 * 512 * 155, 5_200_000)


def test_the_compute_budget_counts_every_image() -> None:
    request = GenerateRequest(prompt="a cat", steps=30, count=4)

    assert compute_cost(request) == 512 * 512 * 120
    error = refusal(request, limits(max_compute_per_request=20_000_000))
    assert "(512×512 × 120 steps over 4 images)" in str(error)


def test_a_films_decodes_count_against_the_compute_budget_like_steps() -> None:
    film = GenerateRequest(prompt="a cat", steps=30, film=True)  # 30 steps and 30 frames decoded
    check_request(film, limits(max_compute_per_request=512 * 512 * 60), steps_used_today=0, active_jobs=0)

    error = refusal(film, limits(max_compute_per_request=512 * 512 * 60 - 1))

    assert str(error) == (
        "This request needs 15,728,640 pixel-steps (512×512 × 60: 30 steps and a film frame decoded at each, "
        "counted as a step); this server allows 15,728,639 per request. Ask for fewer steps, a smaller size or no film."
    )
    assert (error.limit, error.asked, error.allowed) == ("max_compute_per_request", 512 * 512 * 60, 512 * 512 * 60 - 1)
    plain = GenerateRequest(prompt="a cat", steps=30)  # the same image without its film fits in half
    check_request(plain, limits(max_compute_per_request=512 * 512 * 30), steps_used_today=0, active_jobs=0)


def test_a_banned_word_is_refused_without_echoing_the_list() -> None:
    effective = limits(banned_words=("gore", "war crimes"))

    error = refusal(GenerateRequest(prompt="a painting of War   Crimes, oil"), effective)

    assert "war crimes" not in str(error).lower()
    assert "gore" not in str(error)
    assert error.limit == "banned_words"


def test_banned_words_match_whole_words_only() -> None:
    assert banned_word_in("A CAT on a mat", ["cat"]) == "cat"
    assert banned_word_in("a category of mats", ["cat"]) is None
    assert banned_word_in("a scat", ["cat"]) is None


def test_the_negative_prompt_is_checked_too_since_it_is_shown_with_the_image() -> None:
    # It used to be exempt (people name there what they don't want), but the result's embed shows it publicly.
    error = refusal(GenerateRequest(prompt="a beach", negative_prompt="ɡore, blurry"), limits(banned_words=("gore",)))

    assert error.limit == "banned_words" and "negative prompt" in str(error)
    assert "gore" not in str(error)


@pytest.mark.parametrize(
    "prompt",
    [
        "a c\u200bat on a mat",  # zero-width space
        "a c\u00adat",  # soft hyphen
        "a \u0441at",  # Cyrillic es
        "a ϲat",  # Greek lunate sigma
        "a ｃａｔ",  # fullwidth
        "a CAT",
        "a c.a.t",
        "a c a t",
        "a c-a-t",
        "a cát",  # an accent
        "a c\u0301at",  # a combining accent
    ],
)
def test_a_banned_word_is_found_however_it_is_spelled(prompt: str) -> None:
    assert banned_word_in(prompt, ["cat"]) == "cat"
    assert refusal(GenerateRequest(prompt=prompt), limits(banned_words=("cat",))).limit == "banned_words"


@pytest.mark.parametrize(
    "prompt",
    ["WAR  CRIMES", "war\u200b crimes", "war.crimes", "wаr crimes", "ｗａｒ ｃｒｉｍｅｓ", "w a r c r i m e s"],
)
def test_a_banned_phrase_is_found_however_it_is_spelled(prompt: str) -> None:
    assert banned_word_in(f"a painting of {prompt}, oil", ["war crimes"]) == "war crimes"


@pytest.mark.parametrize(
    "prompt", ["a category of mats", "a concatenation", "the scat singer", "a c at", "war on crime"]
)
def test_folding_does_not_ban_innocent_words(prompt: str) -> None:
    assert banned_word_in(prompt, ["cat", "war crimes"]) is None


def test_too_many_jobs_at_once_is_refused() -> None:
    error = refusal(GenerateRequest(prompt="a cat"), limits(max_concurrent_jobs_per_user=2), active=2)

    assert str(error) == (
        "This server allows 2 jobs at a time per member; you already have 2 queued or running. "
        "Try again when one has finished."
    )


def test_the_daily_quota_says_when_it_resets() -> None:
    request = CompareStepsRequest(prompt="a cat")

    error = refusal(request, limits(), used=4_950)

    assert str(error) == (
        "You have used 4,950 of your 5,000 daily steps; this request needs 155. "
        "Your quota resets in 3 h 12 min (00:00 UTC)."
    )
    assert (error.limit, error.asked, error.allowed) == ("daily_steps_per_user", 5_105, 5_000)


def test_a_request_that_exactly_fills_the_quota_is_allowed() -> None:
    check_request(GenerateRequest(prompt="a cat", steps=30), limits(), steps_used_today=4_970, active_jobs=0)


def test_the_quota_resets_at_the_next_midnight_utc() -> None:
    assert next_quota_reset(EVENING) == datetime(2026, 3, 15, tzinfo=UTC)
    assert next_quota_reset(datetime(2026, 3, 15, tzinfo=UTC)) == datetime(2026, 3, 16, tzinfo=UTC)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    common = {
        "prompt": draw(prompts),
        "scheduler": draw(st.sampled_from(SCHEDULER_NAMES)),
        "width": draw(sizes),
        "height": draw(sizes),
    }
    if draw(st.booleans()):
        count = draw(st.integers(1, 4))
        film = count == 1 and draw(st.booleans())
        return GenerateRequest(steps=draw(st.integers(1, 150)), count=count, film=film, **common)
    steps = draw(st.lists(st.integers(1, 150), min_size=2, max_size=12, unique=True))
    return CompareStepsRequest(steps=tuple(steps), **common)


@st.composite
def server_limits(draw: st.DrawFn) -> ServerLimits:
    def maybe(strategy: st.SearchStrategy[object]) -> object:
        return draw(st.none() | strategy)

    return ServerLimits(
        max_steps=maybe(st.integers(1, 150)),  # type: ignore[arg-type]
        allowed_schedulers=maybe(st.lists(st.sampled_from(SCHEDULER_NAMES), min_size=1, unique=True).map(tuple)),  # type: ignore[arg-type]
        max_grid_cells=maybe(st.integers(2, 12)),  # type: ignore[arg-type]
        max_image_size=maybe(st.integers(256, 1024)),  # type: ignore[arg-type]
        max_compute_per_request=maybe(st.integers(1, 10**9)),  # type: ignore[arg-type]
        daily_steps_per_user=maybe(st.integers(1, 5000)),  # type: ignore[arg-type]
        max_concurrent_jobs_per_user=maybe(st.integers(1, 3)),  # type: ignore[arg-type]
        banned_words=maybe(st.lists(st.sampled_from(["gore", "war crimes", "cat"]), min_size=1).map(tuple)),  # type: ignore[arg-type]
    )


def broken_limits(request: Request, effective: EffectiveLimits, used: int, active: int) -> set[str]:
    """An independent statement of every limit, to compare check_request against."""

    def named(text: str) -> bool:
        return any(w in text.split() or (" " in w and w in text) for w in effective.banned_words)

    film_frames = request.steps if isinstance(request, GenerateRequest) and request.film else 0

    broken = {
        "banned_words": named(request.prompt) or named(request.negative_prompt),
        "allowed_schedulers": request.scheduler not in effective.allowed_schedulers,
        "max_steps": max(request.lane_steps) > effective.max_steps,
        "max_grid_cells": isinstance(request, CompareStepsRequest) and len(request.steps) > effective.max_grid_cells,
        "max_image_size": request.width > effective.max_image_size or request.height > effective.max_image_size,
        "max_compute_per_request": request.width * request.height * (total_steps(request) + film_frames)
        > effective.max_compute_per_request,
        "max_concurrent_jobs_per_user": active >= effective.max_concurrent_jobs_per_user,
        "daily_steps_per_user": used + total_steps(request) > effective.daily_steps_per_user,
    }
    return {name for name, is_broken in broken.items() if is_broken}


@given(request=requests(), server=server_limits(), used=st.integers(0, 6000), active=st.integers(0, 4))
def test_a_request_is_refused_exactly_when_it_breaks_a_limit_and_the_refusal_names_one_it_breaks(
    request: Request, server: ServerLimits, used: int, active: int
) -> None:
    effective = EffectiveLimits.combine(server, SETTINGS)
    broken = broken_limits(request, effective, used, active)

    try:
        check_request(request, effective, steps_used_today=used, active_jobs=active, now=EVENING)
    except LimitExceeded as error:
        assert error.limit in broken
    else:
        assert not broken


@given(request=requests(), server=server_limits())
def test_a_request_within_every_limit_is_never_refused(request: Request, server: ServerLimits) -> None:
    # Loosen the server's limits just enough to fit the request, within the operator's ceilings.
    effective = EffectiveLimits.combine(server, SETTINGS)
    fitting = EffectiveLimits(
        max_steps=max(effective.max_steps, *request.lane_steps),
        default_steps=effective.default_steps,
        allowed_schedulers=(*effective.allowed_schedulers, request.scheduler),
        default_scheduler=effective.default_scheduler,
        max_grid_cells=max(effective.max_grid_cells, len(request.lane_steps)),
        max_image_size=max(effective.max_image_size, request.width, request.height),
        max_compute_per_request=max(effective.max_compute_per_request, compute_cost(request)),
        daily_steps_per_user=max(effective.daily_steps_per_user, total_steps(request)),
        max_concurrent_jobs_per_user=effective.max_concurrent_jobs_per_user,
        banned_words=tuple(w for w in effective.banned_words if not banned_word_in(request.prompt, [w])),
    )

    check_request(request, fitting, steps_used_today=0, active_jobs=0, now=EVENING)


@given(server=server_limits())
def test_a_server_can_only_tighten_the_operators_ceilings(server: ServerLimits) -> None:
    effective = EffectiveLimits.combine(server, SETTINGS)

    assert effective.max_steps <= SETTINGS.max_steps
    assert effective.default_steps <= effective.max_steps
    assert effective.max_grid_cells <= SETTINGS.max_grid_cells
    assert effective.max_image_size <= SETTINGS.max_image_size
    assert effective.max_compute_per_request <= SETTINGS.max_compute_per_request
    assert effective.daily_steps_per_user <= SETTINGS.daily_steps_per_user
    assert effective.max_concurrent_jobs_per_user <= SETTINGS.max_concurrent_jobs_per_user
    assert effective.default_scheduler in effective.allowed_schedulers
    assert set(effective.allowed_schedulers) <= set(SCHEDULER_NAMES)


def test_a_refusal_can_name_the_setting_another_way() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_changes({"daily_steps_per_user": 10**12}, ServerLimits(), SETTINGS)
    assert str(caught.value).startswith("daily_steps_per_user must be 1 to 5,000")
    renamed = caught.value.renamed("daily_steps")
    assert isinstance(renamed, InvalidLimit) and renamed.field == "daily_steps_per_user"
    assert str(renamed) == str(caught.value).replace("daily_steps_per_user", "daily_steps")


def test_the_compute_cost_counts_the_steps_that_run_at_the_size_they_run() -> None:
    from inference.requests import GenerateRequest, HiresFix

    png = b"\x89PNG\r\n\x1a\n"
    assert compute_cost(GenerateRequest("a fox", steps=30, width=512, height=512, image=png, strength=0.6)) == (
        512 * 512 * 18
    )
    hires = GenerateRequest("a fox", steps=20, width=512, height=512, hires=HiresFix(steps=10, strength=0.5))
    assert compute_cost(hires) == 512 * 512 * 20 + 1024 * 1024 * 5


# --- /compare-strength -------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # the checks read only that there is an image


def test_a_strength_grid_with_too_many_cells_is_refused_naming_its_shape() -> None:
    from inference.requests import CompareStrengthRequest

    request = CompareStrengthRequest("a cat", strengths=(0.3, 0.5, 0.7, 0.9), steps=(10, 20), image=PNG)

    error = refusal(request, limits(max_grid_cells=6))

    assert str(error) == (
        "This server allows grids of at most 6 cells; you asked for 8 (4 strengths × 2 step counts): give fewer of "
        "either."
    )


def test_a_one_row_guidance_grid_over_the_cells_is_refused_naming_only_its_values() -> None:
    from inference.requests import CompareGuidanceRequest

    request = CompareGuidanceRequest("a cat", guidances=(1.0, 3.0, 5.0, 7.5), steps=(20,))

    assert str(refusal(request, limits(max_grid_cells=3))) == (
        "This server allows grids of at most 3 cells; you asked for 4 (4 guidance values): give fewer of either."
    )


def test_a_strength_grid_row_over_the_servers_steps_is_refused() -> None:
    from inference.requests import CompareStrengthRequest

    request = CompareStrengthRequest("a cat", strengths=(0.3, 0.6), steps=(20, 50), image=PNG)

    assert str(refusal(request, limits(max_steps=40))) == "This server allows at most 40 steps; you asked for 50."


def test_a_strength_grid_costs_only_the_steps_that_run_and_says_so() -> None:
    from inference.requests import CompareStrengthRequest

    # Of 30 steps at 0.3, 0.6 and 0.9: 9 + 18 + 27 = 54 steps run, not 90.
    request = CompareStrengthRequest("a cat", strengths=(0.3, 0.6, 0.9), steps=(30,), image=PNG)
    assert compute_cost(request) == 512 * 512 * 54

    error = refusal(request, limits(max_compute_per_request=10_000_000))

    assert str(error) == (
        "This request needs 14.2M pixel-steps (512×512 × 54 steps that run over 3 cells); this server allows 10.0M "
        "per request."
    )
