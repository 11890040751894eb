"""Per-server limits: tighter than the operator's, validated with clear messages, enforced before queuing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import Settings
from bot.errors import UserFacingError
from bot.limits.server import (
    LIMIT_FIELDS,
    LIMIT_LABELS,
    EffectiveLimits,
    InvalidLimit,
    LimitExceeded,
    ServerLimits,
    UnknownModel,
    banned_word_in,
    check_request,
    choose_model,
    compute_cost,
    next_quota_reset,
    validate_limit_changes,
)
from bot.storage.models import GuildLimits
from inference.protocol import (
    SCHEDULER_NAMES,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    ModelInfo,
    ModelUnavailable,
    Request,
    total_steps,
)
from tests.bot.fakes import FLUX, REGISTRY, SD15, TURBO

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
MODEL_SETTINGS = Settings(_env_file=None, model=REGISTRY)  # type: ignore[call-arg]
EVENING = datetime(2026, 3, 14, 20, 48, tzinfo=UTC)


def validate_limit_change(field: str, value: Any, current: ServerLimits, settings: Settings) -> Any:
    """One change checked on its own; its normalised value."""
    return validate_limit_changes({field: value}, current, settings)[field]


def limits(**server: object) -> EffectiveLimits:
    return EffectiveLimits.combine(ServerLimits(**server), SETTINGS)  # type: ignore[arg-type]


def refusal(request: Request, effective: EffectiveLimits, *, used: int = 0, active: int = 0) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        check_request(request, effective, steps_used_today=used, active_jobs=active, now=EVENING)
    return caught.value


# --- combining with the operator's ceilings -------------------------------------------------------


def test_a_server_without_settings_gets_the_operators_values() -> None:
    effective = EffectiveLimits.combine(None, SETTINGS)

    assert effective.max_steps == SETTINGS.max_steps
    assert effective.default_steps == SETTINGS.default_steps
    assert effective.allowed_schedulers == SCHEDULER_NAMES
    assert effective.default_scheduler == SETTINGS.default_scheduler
    assert effective.daily_steps_per_user == SETTINGS.daily_steps_per_user
    assert effective.banned_words == ()


def test_a_server_value_above_the_ceiling_is_cut_down_to_it() -> None:
    # E.g. the operator lowered a ceiling after the server had set its value.
    operator = Settings(_env_file=None, max_steps=50, max_grid_cells=6, daily_steps_per_user=1000)  # type: ignore[call-arg]
    server = ServerLimits(max_steps=80, default_steps=70, max_grid_cells=12, daily_steps_per_user=5000)

    effective = EffectiveLimits.combine(server, operator)

    assert (effective.max_steps, effective.default_steps) == (50, 50)
    assert effective.max_grid_cells == 6
    assert effective.daily_steps_per_user == 1000


def test_a_lower_server_max_also_lowers_the_operators_default() -> None:
    assert limits(max_steps=20).default_steps == 20


def test_the_default_scheduler_is_always_an_allowed_one() -> None:
    assert limits(allowed_schedulers=("DDIM", "Heun")).default_scheduler == "Heun"
    assert limits(allowed_schedulers=("DDIM", "Heun"), default_scheduler="DDIM").default_scheduler == "DDIM"
    assert limits(allowed_schedulers=("Euler a",)).default_scheduler == "Euler a"


def test_every_limit_field_is_a_guild_limits_column_with_a_label() -> None:
    columns = set(GuildLimits.__table__.columns.keys())

    assert set(LIMIT_FIELDS) <= columns
    assert set(LIMIT_LABELS) == set(LIMIT_FIELDS)


# --- validating changes ----------------------------------------------------------------------------


def test_default_steps_above_the_servers_max_names_the_field_and_range() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change("default_steps", 50, ServerLimits(max_steps=40), SETTINGS)

    assert str(caught.value) == "default_steps must be 1 to 40 (this server's max steps); got 50."
    assert caught.value.field == "default_steps"
    assert isinstance(caught.value, UserFacingError)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_steps", 151, "max_steps must be 1 to 150 (the operator's ceiling); got 151."),
        ("max_steps", 0, "max_steps must be 1 to 150; got 0."),
        ("max_grid_cells", 13, "max_grid_cells must be 2 to 12 (the operator's ceiling); got 13."),
        ("max_grid_cells", 1, "max_grid_cells must be 2 to 12; got 1."),
        ("max_image_size", 2048, "max_image_size must be 256 to 1,024 (the operator's ceiling); got 2,048."),
        ("daily_steps_per_user", -5, "daily_steps_per_user must be 1 to 5,000; got -5."),
        ("max_concurrent_jobs_per_user", 0, "max_concurrent_jobs_per_user must be 1 to 3; got 0."),
        ("max_steps", "lots", "max_steps must be a whole number from 1 to 150; got 'lots'."),
        ("max_steps", True, "max_steps must be a whole number from 1 to 150; got True."),
    ],
)
def test_out_of_range_numbers_are_refused_with_the_range(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change(field, value, ServerLimits(), SETTINGS)

    assert str(caught.value) == message


def test_max_steps_below_the_servers_default_is_refused() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change("max_steps", 20, ServerLimits(default_steps=30), SETTINGS)

    assert str(caught.value) == "max_steps must be 30 to 150 (at least this server's default steps, 30); got 20."


@pytest.mark.parametrize(
    "changes",
    [
        {"max_steps": 20, "default_steps": 15},
        {"default_steps": 15, "max_steps": 20},
    ],
)
def test_max_and_default_can_move_together_in_either_order(changes: dict[str, int]) -> None:
    current = ServerLimits(max_steps=40, default_steps=30)

    assert validate_limit_changes(changes, current, SETTINGS) == {"max_steps": 20, "default_steps": 15}


def test_numbers_typed_as_text_are_accepted() -> None:
    assert validate_limit_change("max_steps", "40", ServerLimits(), SETTINGS) == 40


def test_scheduler_names_are_matched_case_insensitively_and_kept_in_canonical_order() -> None:
    names = validate_limit_change("allowed_schedulers", "unipc, EULER, euler a, Euler", ServerLimits(), SETTINGS)

    assert names == ("Euler", "Euler a", "UniPC")


def test_an_unknown_scheduler_is_refused_with_the_known_names() -> None:
    with pytest.raises(InvalidLimit, match=r"unknown scheduler 'Euler b'; known: Euler, Euler a, Heun"):
        validate_limit_change("default_scheduler", "Euler b", ServerLimits(), SETTINGS)


def test_the_default_scheduler_must_be_allowed() -> None:
    with pytest.raises(InvalidLimit, match=r"^default_scheduler must be one of this server's allowed schedulers"):
        validate_limit_change("default_scheduler", "Heun", ServerLimits(allowed_schedulers=("Euler",)), SETTINGS)
    with pytest.raises(InvalidLimit, match=r"must include this server's default scheduler \(Heun\)"):
        validate_limit_change("allowed_schedulers", ["Euler"], ServerLimits(default_scheduler="Heun"), SETTINGS)

    both = validate_limit_changes(
        {"allowed_schedulers": ["Euler"], "default_scheduler": "euler"},
        ServerLimits(default_scheduler="Heun"),
        SETTINGS,
    )
    assert both == {"allowed_schedulers": ("Euler",), "default_scheduler": "Euler"}


@pytest.mark.parametrize(
    ("changes", "settings", "message"),
    [
        ({"allowed_schedulers": "Euler, DDIM", "default_scheduler": "Heun"}, SETTINGS,
         "default_scheduler must be one of this server's allowed schedulers (Euler, DDIM); got Heun."),
        ({"allowed_models": "flux", "default_model": "sd15"}, MODEL_SETTINGS,
         "default_model must be one of this server's allowed models (flux); got sd15."),
        ({"max_steps": 20, "default_steps": 30}, SETTINGS,
         "default_steps must be 1 to 20 (this server's max steps); got 30."),
    ],
)  # fmt: skip
def test_a_default_set_with_its_list_or_maximum_is_refused_against_the_new_one(
    changes: dict[str, object], settings: Settings, message: str
) -> None:
    # Not "change the default first": the admin is changing it, in the same command.
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_changes(changes, ServerLimits(), settings)
    assert str(caught.value) == message


def test_an_empty_scheduler_list_is_refused() -> None:
    with pytest.raises(InvalidLimit, match="at least one scheduler"):
        validate_limit_change("allowed_schedulers", " , ", ServerLimits(), SETTINGS)


def test_banned_words_are_folded_and_deduplicated() -> None:
    words = validate_limit_change("banned_words", "Gore,  gore , War   Crimes,", ServerLimits(), SETTINGS)

    assert words == ("gore", "war crimes")
    assert validate_limit_change("banned_words", "", ServerLimits(), SETTINGS) is None


def test_none_resets_a_field() -> None:
    assert validate_limit_change("max_steps", None, ServerLimits(max_steps=20), SETTINGS) is None


def test_an_unknown_setting_is_refused_with_the_list_of_settings() -> None:
    with pytest.raises(InvalidLimit, match=r"Unknown setting 'max_stepz'; the settings are: max_steps, default_steps"):
        validate_limit_change("max_stepz", 10, ServerLimits(), SETTINGS)


# --- checking requests -----------------------------------------------------------------------------


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


# --- properties ------------------------------------------------------------------------------------

sizes = st.integers(32, 128).map(lambda n: n * 8)
prompts = st.sampled_from(["a cat", "a lighthouse at dusk", "gore", "a category of war crimes", "oil painting"])


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


# --- models ----------------------------------------------------------------------------------------

LOADED = {model.name: model for model in (SD15, TURBO, FLUX)}


def model_limits(**server: object) -> EffectiveLimits:
    return EffectiveLimits.combine(ServerLimits(**server), MODEL_SETTINGS)  # type: ignore[arg-type]


def test_every_registry_model_is_allowed_and_the_first_is_the_default() -> None:
    effective = model_limits()
    assert effective.allowed_models == ("sd15", "sdxl-turbo", "flux") and effective.default_model == "sd15"
    # The registry's max_steps is a ceiling of its own.
    assert dict(effective.model_max_steps) == {"sd15": 150, "sdxl-turbo": 8, "flux": 150}


def test_allowed_models_are_named_case_insensitively_and_kept_in_registry_order() -> None:
    assert validate_limit_changes({"allowed_models": "FLUX, sd15"}, ServerLimits(), MODEL_SETTINGS) == {
        "allowed_models": ("sd15", "flux")
    }


def test_a_model_outside_the_operators_registry_is_refused_with_the_models() -> None:
    with pytest.raises(InvalidLimit, match="allowed_models: unknown model 'sdxl'; the operator's models are: sd15,"):
        validate_limit_changes({"allowed_models": "sd15, sdxl"}, ServerLimits(), MODEL_SETTINGS)


def test_the_default_model_must_be_an_allowed_one() -> None:
    with pytest.raises(InvalidLimit, match=r"default_model must be one of this server's allowed models \(flux\)"):
        validate_limit_changes({"default_model": "sd15"}, ServerLimits(allowed_models=("flux",)), MODEL_SETTINGS)
    with pytest.raises(InvalidLimit, match=r"must include this server's default model \(sd15\)"):
        validate_limit_changes({"allowed_models": "flux"}, ServerLimits(default_model="sd15"), MODEL_SETTINGS)
    assert validate_limit_changes({"allowed_models": "flux", "default_model": "flux"}, ServerLimits(), MODEL_SETTINGS)


def test_per_model_ceilings_are_read_from_text_and_stay_under_the_registrys() -> None:
    changes = validate_limit_changes({"model_max_steps": "flux=28, sdxl-turbo: 4"}, ServerLimits(), MODEL_SETTINGS)
    assert changes == {"model_max_steps": (("sdxl-turbo", 4), ("flux", 28))}
    with pytest.raises(InvalidLimit, match=r"must be 1 to 8 \(the model's ceiling in the operator's registry for"):
        validate_limit_changes({"model_max_steps": "sdxl-turbo=12"}, ServerLimits(), MODEL_SETTINGS)
    with pytest.raises(InvalidLimit, match="write each model's ceiling like sdxl-turbo=8; got 'flux'"):
        validate_limit_changes({"model_max_steps": "flux"}, ServerLimits(), MODEL_SETTINGS)


def test_a_per_model_ceiling_refuses_more_steps_with_that_model_only() -> None:
    effective = model_limits(model_max_steps=(("flux", 28),))
    with pytest.raises(LimitExceeded, match="at most 28 steps with the model flux; you asked for 30") as caught:
        check_request(GenerateRequest("x", steps=30, model="flux"), effective, steps_used_today=0, active_jobs=0)
    assert caught.value.limit == "model_max_steps"
    check_request(GenerateRequest("x", steps=30, model="sd15"), effective, steps_used_today=0, active_jobs=0)


def test_a_model_the_server_does_not_allow_is_refused_listing_the_allowed_ones() -> None:
    effective = model_limits(allowed_models=("sd15", "flux"))
    with pytest.raises(LimitExceeded, match=r"doesn't allow the model sdxl-turbo; it allows: sd15, flux."):
        check_request(GenerateRequest("x", model="sdxl-turbo"), effective, steps_used_today=0, active_jobs=0)


def test_choose_model_gives_the_servers_default_when_left_out() -> None:
    assert choose_model(None, model_limits(), LOADED) == SD15
    assert choose_model(None, model_limits(allowed_models=("flux", "sd15"), default_model="flux"), LOADED) == FLUX
    assert choose_model("SDXL-Turbo", model_limits(), LOADED) == TURBO
    assert choose_model("sd15", model_limits(), {}) is None  # no worker report yet


def test_choose_model_refuses_a_disallowed_a_failed_and_an_unknown_model() -> None:
    failed = {"flux": ModelUnavailable("flux", "out of memory")}
    loaded = {"sd15": SD15, "sdxl-turbo": TURBO}
    with pytest.raises(LimitExceeded, match=r"doesn't allow the model sdxl-turbo; it allows: sd15."):
        choose_model("sdxl-turbo", model_limits(allowed_models=("sd15",)), loaded, failed)
    with pytest.raises(UnknownModel, match=r"^The model flux is unavailable: out of memory$"):
        choose_model("flux", model_limits(), loaded, failed)
    with pytest.raises(UnknownModel, match=r"Unknown model 'sd3'; choose one of: sd15, sdxl-turbo."):
        choose_model("sd3", model_limits(), loaded, failed)


def test_a_default_model_that_failed_gives_way_to_the_next_allowed_one() -> None:
    failed = {"sd15": ModelUnavailable("sd15", "gone")}
    assert choose_model(None, model_limits(), {"sdxl-turbo": TURBO, "flux": FLUX}, failed) == TURBO


def test_defaults_come_from_the_model_unless_the_server_chose_its_own() -> None:
    turbo = model_limits().request_defaults(TURBO)
    assert (turbo.steps, turbo.scheduler, turbo.guidance, turbo.width, turbo.compare_steps, turbo.model) == (
        4, "Euler a", 0.0, 1024, (1, 2, 3, 4, 6, 8), "sdxl-turbo",
    )  # fmt: skip
    own = model_limits(default_steps=20, default_scheduler="Heun", max_image_size=512).request_defaults(FLUX)
    assert (own.steps, own.scheduler, own.width, own.height) == (20, "Heun", 512, 512)
    # A server default over the model's ceiling is cut to it; a scheduler it can't run gives way.
    capped = model_limits(default_steps=20, default_scheduler="DDIM").request_defaults(TURBO)
    assert (capped.steps, capped.scheduler) == (8, "Euler a")


def test_the_ladder_stays_under_the_models_ceiling_in_this_server() -> None:
    defaults = model_limits(model_max_steps=(("flux", 20),)).request_defaults(FLUX)
    assert defaults.compare_steps == (4, 8, 12, 20)
    assert model_limits(max_grid_cells=3).request_defaults(SD15).compare_steps == (5, 10, 20)


def test_without_a_model_the_defaults_are_the_servers() -> None:
    defaults = model_limits(default_steps=12).request_defaults(None)
    assert (defaults.steps, defaults.scheduler, defaults.model) == (12, "Euler a", "")


# --- /compare-schedulers --------------------------------------------------------------------------


def test_a_scheduler_grid_over_the_cell_limit_names_its_shape() -> None:
    request = CompareSchedulersRequest("a cat", schedulers=("Euler a", "DDIM", "UniPC"), steps=(2, 4, 6))
    error = refusal(request, limits(max_grid_cells=6))
    assert str(error) == (
        "This server allows grids of at most 6 cells; you asked for 9 (3 schedulers × 3 step counts): "
        "give fewer of either."
    )


def test_every_row_of_a_scheduler_grid_must_be_an_allowed_scheduler() -> None:
    request = CompareSchedulersRequest("a cat", schedulers=("Euler", "Heun"), steps=(2, 4))
    error = refusal(request, limits(allowed_schedulers=("Euler", "DDIM")))
    assert str(error) == "This server doesn't allow the Heun scheduler; it allows: Euler, DDIM."


def test_a_scheduler_grid_costs_every_cell_against_the_compute_budget() -> None:
    request = CompareSchedulersRequest("a cat", schedulers=("Euler", "DDIM"), steps=(10, 20), width=256, height=256)
    error = refusal(request, limits(max_compute_per_request=256 * 256 * 50))
    assert "(256×256 × 60 steps over 4 cells)" in str(error)


@pytest.mark.parametrize(
    ("model", "rows"),
    [(SD15, ("Euler a", "UniPC", "DDIM")), (FLUX, ("Euler", "Heun", "DPM++ 2M", "UniPC"))],
    ids=["sd", "flow"],
)
def test_the_default_grid_rows_are_a_varied_set_the_model_can_run(model: ModelInfo, rows: tuple[str, ...]) -> None:
    assert limits().request_defaults(model).grid_schedulers == rows


def test_the_default_grid_rows_of_an_lcm_model_start_with_lcm() -> None:
    lcm = dataclasses.replace(
        SD15, name="lcm", schedulers=(*SD15.schedulers, "LCM"), default_scheduler="LCM", default_guidance=8.5
    )
    assert limits().request_defaults(lcm).grid_schedulers == ("LCM", "Euler a", "UniPC", "DDIM")


def test_the_default_grid_rows_are_only_schedulers_the_server_allows() -> None:
    defaults = limits(allowed_schedulers=("Euler a", "Euler", "DDIM")).request_defaults(SD15)
    assert defaults.grid_schedulers == ("Euler a", "DDIM")
    assert defaults.max_grid_cells == SETTINGS.max_grid_cells
