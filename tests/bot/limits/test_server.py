"""Per-server limits: tighter than the operator's, validated with clear messages, enforced before queuing."""

from __future__ import annotations

import dataclasses

import pytest

from bot.config import Settings
from bot.limits.changes import validate_limit_changes
from bot.limits.checks import check_request
from bot.limits.server import (
    LIMIT_FIELDS,
    LIMIT_LABELS,
    EffectiveLimits,
    InvalidLimit,
    LimitExceeded,
    ServerLimits,
    UnknownModel,
    choose_model,
)
from bot.storage.models import GuildLimits
from inference.model_info import ModelInfo, ModelUnavailable
from inference.requests import SCHEDULER_NAMES, CompareSchedulersRequest, GenerateRequest
from tests.bot.fakes import FLUX, SD15, TURBO
from tests.bot.limits.shared import MODEL_SETTINGS, SETTINGS, limits, refusal


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


def test_learned_steps_are_the_operators_default_until_a_server_chooses_and_the_operator_sets_n() -> None:
    assert (limits().learned_steps, limits().learned_steps_min_grids) == (False, 3)
    assert limits(learned_steps=True).learned_steps is True
    operator_on = Settings(_env_file=None, learned_steps=True, learned_steps_min_grids=5)  # type: ignore[call-arg]
    assert EffectiveLimits.combine(ServerLimits(), operator_on).learned_steps is True
    assert EffectiveLimits.combine(ServerLimits(learned_steps=False), operator_on).learned_steps is False
    assert EffectiveLimits.combine(ServerLimits(), operator_on).learned_steps_min_grids == 5
