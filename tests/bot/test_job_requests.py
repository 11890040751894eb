"""Requests from what people type: parsers, defaults, the one builder, and the requests buttons derive."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from bot.errors import InvalidOption
from bot.job_requests import (
    STEP_LADDER,
    RequestDefaults,
    RequestOptions,
    build_request,
    checked,
    compare_steps_around,
    derive_request,
    find_scheduler,
    grid_cell,
    one_of_images,
    parse_size,
    resolve_size,
    resolve_step_list,
    spread,
    step_down,
    step_up,
)
from inference.requests import (
    DEFAULT_GRID_SCHEDULERS,
    DEFAULT_SCHEDULER,
    MAX_STEPS,
    SCHEDULER_NAMES,
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    InvalidRequest,
    PlainRow,
)
from tests.bot.fakes import COMPARE, IMAGINE

# --- parsing (moved from inference/protocol.py with the parsers) -------------------------------


def test_size_parsing() -> None:
    assert parse_size("512") == (512, 512)
    assert parse_size("768x512") == (768, 512)
    assert parse_size("768×512") == (768, 512)
    with pytest.raises(InvalidRequest, match="like 512 or 768x512"):
        parse_size("big")
    with pytest.raises(InvalidRequest, match="like 512 or 768x512"):
        parse_size("1x2x3")


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_is_found_in_any_capitalisation(name: str) -> None:
    assert find_scheduler(name) == name
    assert find_scheduler(f"  {name.upper()} ") == name
    assert find_scheduler(name.lower()) == name


def test_an_unknown_scheduler_is_not_found() -> None:
    assert find_scheduler("Turbo") is None
    assert find_scheduler("Euler aa") is None


# --- defaults and the builder ------------------------------------------------------------------


def test_the_defaults_are_the_wire_types_defaults() -> None:
    defaults = RequestDefaults()
    plain = GenerateRequest("x")
    assert (defaults.steps, defaults.scheduler, defaults.guidance) == (plain.steps, DEFAULT_SCHEDULER, plain.guidance)
    assert (defaults.width, defaults.height) == (plain.width, plain.height) == (512, 512)
    assert defaults.steps == 30


def test_options_left_out_take_the_defaults_and_a_random_seed() -> None:
    defaults = RequestDefaults(steps=12, scheduler="Heun")
    request = build_request(RequestOptions("  a fox  "), defaults)
    assert isinstance(request, GenerateRequest)
    assert (request.prompt, request.steps, request.scheduler, request.count) == ("a fox", 12, "Heun", 1)
    assert (request.width, request.height, request.negative_prompt) == (512, 512, "")
    assert 0 <= request.seed <= 2**32 - 1


def test_given_options_win_over_the_defaults() -> None:
    options = RequestOptions("fox", " blur ", "dpm++ 2m karras", 7, 3.5, "768x512", steps=20, count=2)
    request = build_request(options, RequestDefaults())
    assert request == GenerateRequest(
        "fox",
        steps=20,
        scheduler="DPM++ 2M Karras",
        seed=7,
        guidance=3.5,
        width=768,
        height=512,
        negative_prompt="blur",
        count=2,
    )


def test_a_comparison_is_built_from_its_step_list() -> None:
    request = build_request(RequestOptions("fox", seed=1, compare_steps="4, 8", grid=True), RequestDefaults())
    assert request == CompareStepsRequest("fox", steps=(4, 8), scheduler=DEFAULT_SCHEDULER, seed=1)
    default = build_request(RequestOptions("fox", seed=1, grid=True), RequestDefaults())
    assert isinstance(default, CompareStepsRequest) and default.steps == (5, 10, 20, 30, 40, 50)


def test_the_builder_leaves_an_unknown_scheduler_for_the_check_to_refuse() -> None:
    request = build_request(RequestOptions("fox", scheduler="Turbo"), RequestDefaults())
    assert request.scheduler == "Turbo"
    with pytest.raises(InvalidOption, match="Unknown scheduler 'Turbo'; choose one of: Euler, "):
        checked(request)


def test_unreadable_options_are_refused_as_option_errors() -> None:
    with pytest.raises(InvalidOption, match="like 512 or 768x512"):
        build_request(RequestOptions("fox", size="big"), RequestDefaults())
    with pytest.raises(InvalidOption, match="like 5,10,20,30"):
        build_request(RequestOptions("fox", compare_steps="5,x", grid=True), RequestDefaults())


def test_checked_turns_an_invalid_request_into_an_option_error() -> None:
    assert checked(IMAGINE) is IMAGINE
    with pytest.raises(InvalidOption, match=f"steps must be 1 to {MAX_STEPS}; got 0."):
        checked(GenerateRequest("fox", steps=0))


# --- the step ladder and the requests buttons derive ------------------------------------------


def test_the_step_ladder_moves_one_rung() -> None:
    assert (step_down(30), step_up(30)) == (25, 40)
    assert (step_down(33), step_up(33)) == (30, 40)
    assert step_down(1) is None
    assert step_up(150) is None
    assert all(step_up(rung) == higher for rung, higher in itertools.pairwise(STEP_LADDER))


def test_fewer_and_more_move_along_the_step_ladder() -> None:
    assert derive_request(IMAGINE, "fewer") == GenerateRequest(**{**IMAGINE.__dict__, "steps": 15})
    assert derive_request(IMAGINE, "more") == GenerateRequest(**{**IMAGINE.__dict__, "steps": 25})


@pytest.mark.parametrize(("steps", "action"), [(1, "fewer"), (150, "more")])
def test_no_step_below_one_or_above_the_maximum(steps: int, action: str) -> None:
    with pytest.raises(InvalidOption, match="already"):
        derive_request(GenerateRequest("x", steps=steps), action)


def test_reroll_keeps_everything_but_the_seed() -> None:
    rerolled = derive_request(COMPARE, "reroll", rng=random.Random(5))
    assert isinstance(rerolled, CompareStepsRequest)
    assert rerolled.steps == COMPARE.steps
    assert rerolled.seed != COMPARE.seed


def test_compare_from_a_result_includes_its_own_step_count() -> None:
    assert compare_steps_around(25) == (5, 10, 20, 25, 30, 40, 50)
    assert compare_steps_around(30) == (5, 10, 20, 30, 40, 50)


def test_step_buttons_refuse_a_comparison() -> None:
    with pytest.raises(InvalidOption):
        derive_request(COMPARE, "more")


def test_size_option_defaults_and_errors() -> None:
    defaults = RequestDefaults()
    assert resolve_size(None, defaults) == (512, 512)
    assert resolve_size("768x512", defaults) == (768, 512)
    with pytest.raises(InvalidOption, match="768x512"):
        resolve_size("big", defaults)


def test_a_step_list_typed_out_of_order_becomes_ascending_columns() -> None:
    assert resolve_step_list("20, 5,10") == (5, 10, 20)
    grid = build_request(RequestOptions("a fox", compare_steps="50,5 20", scheduler_grid=True), RequestDefaults())
    assert grid.steps == (5, 20, 50)  # type: ignore[union-attr]


def test_a_malformed_step_list_shows_the_expected_form() -> None:
    assert resolve_step_list(None) == (5, 10, 20, 30, 40, 50)
    with pytest.raises(InvalidOption, match="5,10,20,30"):
        resolve_step_list("5,x,10")


# --- the model's defaults and ceilings ---------------------------------------------------------------

TURBO_DEFAULTS = RequestDefaults(
    steps=4, scheduler="Euler a", guidance=0.0, width=1024, height=1024, compare_steps=(1, 2, 3, 4, 6, 8), model="t"
)


def test_the_builder_takes_the_models_defaults_and_name() -> None:
    request = build_request(RequestOptions("a fox", grid=True), TURBO_DEFAULTS)
    assert isinstance(request, CompareStepsRequest)
    assert (request.steps, request.guidance, request.width, request.model) == ((1, 2, 3, 4, 6, 8), 0.0, 1024, "t")


def test_more_steps_stops_at_the_models_ceiling_and_compare_uses_its_ladder() -> None:
    request = GenerateRequest("x", steps=6, model="t")
    assert derive_request(request, "more", defaults=TURBO_DEFAULTS, max_steps=8) == GenerateRequest(
        "x", steps=8, model="t"
    )
    with pytest.raises(InvalidOption, match=r"^8 steps is already the most allowed here\.$"):
        derive_request(GenerateRequest("x", steps=8), "more", defaults=TURBO_DEFAULTS, max_steps=8)
    with pytest.raises(InvalidOption, match=r"^150 steps is already the most\.$"):
        derive_request(GenerateRequest("x", steps=150), "more", defaults=TURBO_DEFAULTS)
    with pytest.raises(InvalidOption, match=r"^1 step is already the least\.$"):
        derive_request(GenerateRequest("x", steps=1), "fewer", defaults=TURBO_DEFAULTS)
    compare = derive_request(GenerateRequest("x", steps=5, model="t"), "compare", defaults=TURBO_DEFAULTS)
    assert isinstance(compare, CompareStepsRequest) and (compare.steps, compare.model) == ((1, 2, 3, 4, 5, 6, 8), "t")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RequestOptions("fox", count=""), "count must be a whole number; got ''."),  # type: ignore[arg-type]
        (RequestOptions("fox", guidance="7"), "guidance must be a number; got '7'."),  # type: ignore[arg-type]
        (RequestOptions("fox", steps=True), "steps must be a whole number; got True."),
        (RequestOptions(12345), "prompt must be text; got 12345."),  # type: ignore[arg-type]
        (RequestOptions("fox", size=512, grid=True), "size must be text; got 512."),  # type: ignore[arg-type]
    ],
)
def test_an_option_of_the_wrong_type_from_a_crafted_client_is_an_option_error(
    options: RequestOptions, message: str
) -> None:
    with pytest.raises(InvalidOption, match=re.escape(message)):
        build_request(options, RequestDefaults())


# --- the Steps film -------------------------------------------------------------------------------


def test_the_film_button_reruns_the_same_image_keeping_every_step() -> None:
    source = GenerateRequest("fox", steps=12, scheduler="DPM++ 2M Karras", seed=77, count=3, model="tiny")
    film = derive_request(source, "film")
    assert film == GenerateRequest(**{**source.__dict__, "film": True, "count": 1})


def test_the_film_option_asks_for_a_film_of_one_image() -> None:
    request = build_request(RequestOptions("fox", film=True), RequestDefaults())
    assert isinstance(request, GenerateRequest) and request.film and request.count == 1
    assert not build_request(RequestOptions("fox"), RequestDefaults()).film  # type: ignore[union-attr]


def test_a_film_of_several_images_is_refused_with_what_to_do() -> None:
    with pytest.raises(InvalidOption, match="set count to 1"):
        checked(build_request(RequestOptions("fox", count=2, film=True), RequestDefaults()))


# --- /compare-schedulers -------------------------------------------------------------------------


def test_a_scheduler_grid_is_built_from_its_lists_in_any_capitalisation() -> None:
    options = RequestOptions("a fox", schedulers="euler A, ddim,UniPC", compare_steps="2,4", scheduler_grid=True)
    request = build_request(options, RequestDefaults())
    assert isinstance(request, CompareSchedulersRequest)
    assert (request.schedulers, request.steps) == (("Euler a", "DDIM", "UniPC"), (2, 4))
    assert request.lane_schedulers == ("Euler a", "Euler a", "DDIM", "DDIM", "UniPC", "UniPC")
    assert request.lane_steps == (2, 4, 2, 4, 2, 4)


def test_a_default_scheduler_grid_spreads_the_ladder_to_fit_the_cell_limit() -> None:
    defaults = RequestDefaults(compare_steps=(5, 10, 20, 30, 40, 50), max_grid_cells=12)
    request = build_request(RequestOptions("a fox", scheduler_grid=True), defaults)
    assert isinstance(request, CompareSchedulersRequest)
    assert request.schedulers == DEFAULT_GRID_SCHEDULERS and request.steps == (5, 20, 50)
    assert checked(request) is request
    two_rows = build_request(RequestOptions("a fox", schedulers="Euler a, DDIM", scheduler_grid=True), defaults)
    assert two_rows.lane_steps == (5, 10, 20, 30, 40, 50) * 2


def test_scheduler_lists_are_read_with_commas_or_semicolons() -> None:
    options = RequestOptions("a fox", schedulers="euler a; DDIM,unipc", compare_steps="2,4", scheduler_grid=True)
    request = build_request(options, RequestDefaults())
    assert isinstance(request, CompareSchedulersRequest) and request.schedulers == ("Euler a", "DDIM", "UniPC")


def test_spread_keeps_the_ends_of_the_ladder() -> None:
    assert spread((1, 2, 3, 4, 6, 8), 3) == (1, 3, 8)
    assert spread((1, 2, 3, 4, 6, 8), 4) == (1, 3, 4, 8)
    assert spread((5, 10), 3) == (5, 10)


@pytest.mark.parametrize(
    ("schedulers", "steps", "message"),
    [
        ("Euler a", "2,4", "needs 2 to 6 schedulers; got 1"),
        ("Euler a, euler a", "2,4", "Euler a is in the list twice; give each scheduler once."),
        ("Euler a, Turbo", "2,4", "Unknown scheduler 'Turbo'"),
        ("Euler a, DDIM", "4", "at least 2 step counts; got 1"),
        ("Euler a, DDIM, UniPC", "1,2,3,4,5", "at most 12 cells; 3 schedulers × 5 step counts would be 15"),
        (" , ", "2,4", "needs 2 to 6 schedulers; got 0"),
    ],
)
def test_a_bad_scheduler_grid_is_refused_saying_what_to_change(schedulers: str, steps: str, message: str) -> None:
    options = RequestOptions("a fox", schedulers=schedulers, compare_steps=steps, scheduler_grid=True)
    with pytest.raises(InvalidOption, match=re.escape(message)):
        checked(build_request(options, RequestDefaults()))


def test_a1111_lora_tags_leave_the_prompt_and_become_the_requests_loras() -> None:
    defaults = RequestDefaults(lora_weights=(("pixel-art", 0.8), ("lcm", 1.0)))
    request = build_request(RequestOptions("a fox <lora:Pixel-Art:0.5>, in snow <lora:lcm>", seed=1), defaults)
    assert request.prompt == "a fox , in snow" and request.loras == (("pixel-art", 0.5), ("lcm", 1.0))
    option = build_request(RequestOptions("a fox", seed=1, lora="pixel-art"), defaults)
    assert option.loras == (("pixel-art", 0.8),)  # its default weight
    weighted = build_request(RequestOptions("a fox", seed=1, lora="pixel-art", lora_weight=1.2), defaults)
    assert weighted.loras == (("pixel-art", 1.2),)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RequestOptions("a fox <lora::0.5>"), "A LoRA tag needs a name: write it like <lora:name:0.8>."),
        (RequestOptions("a fox <lora:pixel:lots>"), "Could not read the weight of the LoRA 'pixel' ('lots')"),
        (RequestOptions("a fox", lora_weight=0.5), "lora weight needs a lora"),
    ],
)
def test_a_lora_written_wrong_is_one_line_saying_how_to_write_it(options: RequestOptions, message: str) -> None:
    with pytest.raises(InvalidOption, match=re.escape(message)):
        build_request(options, RequestDefaults())


# --- /compare-strength -----------------------------------------------------------------------

IMAGE = b"\x89PNG\r\n\x1a\n"


def test_a_strength_grid_left_to_its_defaults_is_the_default_strengths_at_the_models_steps() -> None:
    from inference.requests import DEFAULT_COMPARE_STRENGTHS, CompareStrengthRequest

    options = RequestOptions("a fox", seed=3, image=IMAGE, size="320x256", strength_grid=True)
    request = build_request(options, RequestDefaults(steps=25, scheduler="DDIM"))
    assert request == CompareStrengthRequest(
        "a fox",
        strengths=DEFAULT_COMPARE_STRENGTHS,
        steps=(25,),
        scheduler="DDIM",
        seed=3,
        width=320,
        height=256,
        image=IMAGE,
    )


def test_strengths_and_step_rows_are_read_in_ascending_order() -> None:
    from inference.requests import CompareStrengthRequest

    options = RequestOptions("a fox", image=IMAGE, strengths="0.9, 0.3;0.6", compare_steps="30,10", strength_grid=True)
    request = build_request(options, RequestDefaults())
    assert isinstance(request, CompareStrengthRequest)
    assert (request.strengths, request.steps) == ((0.3, 0.6, 0.9), (10, 30))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RequestOptions("a fox", strength_grid=True), "A strength comparison starts from an image: attach one"),
        (RequestOptions("a fox", image=IMAGE, strengths="a lot", strength_grid=True), "Could not read strengths"),
        (RequestOptions("a fox", image=IMAGE, strengths="0.5,nan", strength_grid=True), "Could not read strengths"),
        (
            RequestOptions("a fox", image=IMAGE, strength=0.5, strength_grid=True),
            "Give the strengths to compare with `strengths`",
        ),
    ],
)
def test_a_strength_grid_that_cant_be_built_is_one_line(options: RequestOptions, message: str) -> None:
    with pytest.raises(InvalidOption, match=f"^{re.escape(message)}"):
        build_request(options, RequestDefaults())


# --- one image of several, one grid cell (their Vary and Upscale) ------------------------------


def test_one_of_several_images_is_that_images_run_alone() -> None:
    several = GenerateRequest("a fox", seed=40, count=4, steps=12, scheduler="Euler")
    second = one_of_images(several, 2)
    assert (second.seed, second.count, second.steps, second.scheduler) == (41, 1, 12, "Euler")
    with pytest.raises(InvalidOption, match=r"That result has 4 images; no image 5\."):
        one_of_images(several, 5)


def test_a_steps_cell_is_its_step_count_of_the_grid() -> None:
    grid = CompareStepsRequest("a fox", seed=9, steps=(5, 10, 20), scheduler="Euler", guidance=6.0, width=256)
    cell = grid_cell(grid, 2)
    expected = GenerateRequest("a fox", seed=9, width=256, steps=10, scheduler="Euler", guidance=6.0)
    assert cell == expected


def test_a_lora_comparisons_plain_cell_runs_without_its_loras_at_its_rows_scheduler() -> None:
    grid = CompareStepsRequest(
        "a fox",
        steps=(4, 8),
        loras=(("lcm", 1.0),),
        scheduler="LCM",
        guidance=1.0,
        without_loras=PlainRow("Euler a", 7.5),
    )
    plain, with_lora = grid_cell(grid, 2), grid_cell(grid, 4)
    assert (plain.loras, plain.scheduler, plain.guidance, plain.steps) == ((), "Euler a", 7.5, 8)
    assert (with_lora.loras, with_lora.scheduler, with_lora.guidance, with_lora.steps) == (
        (("lcm", 1.0),),
        "LCM",
        1.0,
        8,
    )


def test_grid_cells_carry_their_own_scheduler_strength_and_guidance() -> None:
    schedulers = CompareSchedulersRequest("x", schedulers=("Euler", "DPM++ 2M"), steps=(5, 20))
    assert (grid_cell(schedulers, 3).scheduler, grid_cell(schedulers, 3).steps) == ("DPM++ 2M", 5)
    strength = CompareStrengthRequest("x", image=b"png", strengths=(0.3, 0.6), steps=(10, 30))
    cell = grid_cell(strength, 4)
    assert (cell.strength, cell.steps, cell.image) == (0.6, 30, b"png")
    guidance = CompareGuidanceRequest("x", guidances=(3.0, 7.5), steps=(20, 30))
    assert (grid_cell(guidance, 2).guidance, grid_cell(guidance, 3).steps) == (7.5, 30)


def test_a_cell_past_the_grids_end_is_one_line() -> None:
    with pytest.raises(InvalidOption, match=r"That grid has 3 cells; no cell 4\."):
        grid_cell(COMPARE, 4)


# --- steps: auto ---------------------------------------------------------------------------------


def test_auto_steps_runs_at_most_the_models_longest_ladder_count_unless_steps_are_given() -> None:
    defaults = RequestDefaults(steps=30, compare_steps=(5, 10, 20, 30, 40, 50))
    request = build_request(RequestOptions("a fox", scheduler="Euler", auto_steps=True), defaults)
    assert isinstance(request, GenerateRequest) and (request.steps, request.auto_steps) == (50, True)
    capped = build_request(RequestOptions("a fox", scheduler="Euler", steps=24, auto_steps=True), defaults)
    assert isinstance(capped, GenerateRequest) and (capped.steps, capped.auto_steps) == (24, True)


def test_an_auto_jobs_step_and_film_buttons_ask_for_a_fixed_step_count() -> None:
    request = GenerateRequest("a fox", steps=50, scheduler="Euler", auto_steps=True)
    for action in ("fewer", "more", "film"):
        derived = derive_request(request, action)
        assert isinstance(derived, GenerateRequest) and derived.auto_steps is False
        checked(derived)
    assert derive_request(request, "reroll").auto_steps is True  # type: ignore[union-attr]
