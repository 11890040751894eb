"""The limits on images in and up: image input on or off, the input's pixels, the upscale cap."""

from __future__ import annotations

import pytest

from bot.config import Settings
from bot.limits.changes import validate_limit_changes
from bot.limits.checks import check_image_input, check_input_pixels, check_request, check_sizes, size_ceiling
from bot.limits.server import EffectiveLimits, InvalidLimit, LimitExceeded, ServerLimits
from inference.requests import GenerateRequest, HiresFix
from tests.bot.limits.shared import SETTINGS, limits

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
UPSCALE = GenerateRequest("a fox", width=512, height=512, image=PNG, strength=1.0, hires=HiresFix(steps=4))


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_the_operators_defaults_take_images_up_to_the_bomb_guard_and_upscale_to_the_max_image_size() -> None:
    effective = limits()
    assert (effective.image_input, effective.max_input_megapixels) == (True, 9.4)
    assert effective.max_upscale_size == effective.max_image_size == 1024


def test_a_server_can_switch_image_input_off_and_not_on_where_the_operator_has_it_off() -> None:
    assert limits(image_input=False).image_input is False
    operator_off = settings(image_input=False)
    assert EffectiveLimits.combine(ServerLimits(image_input=True), operator_off).image_input is False
    with pytest.raises(InvalidLimit, match="The operator has switched image input off; image_input can't be"):
        validate_limit_changes({"image_input": True}, ServerLimits(), operator_off)
    assert validate_limit_changes({"image_input": False}, ServerLimits(), operator_off) == {"image_input": False}


def test_the_input_pixel_cap_is_a_number_of_megapixels_within_the_operators() -> None:
    assert validate_limit_changes({"max_input_megapixels": "2.5"}, ServerLimits(), SETTINGS) == {
        "max_input_megapixels": 2.5
    }
    with pytest.raises(InvalidLimit, match=r"must be 0.1 to 9.4 megapixels \(the operator's ceiling\); got 12"):
        validate_limit_changes({"max_input_megapixels": 12}, ServerLimits(), SETTINGS)
    with pytest.raises(InvalidLimit, match=r"must be a number of megapixels from 0\.1 to 9\.4; got 'lots'"):
        validate_limit_changes({"max_input_megapixels": "lots"}, ServerLimits(), SETTINGS)
    assert (
        EffectiveLimits.combine(
            ServerLimits(max_input_megapixels=8.0), settings(max_input_megapixels=2)
        ).max_input_megapixels
        == 2
    )


def test_the_upscale_cap_follows_the_servers_max_image_size_until_it_sets_its_own() -> None:
    assert limits(max_image_size=512).max_upscale_size == 512
    assert limits(max_image_size=512, max_upscale_size=1024).max_upscale_size == 1024
    operator = settings(max_upscale_size=1536)
    assert EffectiveLimits.combine(ServerLimits(), operator).max_upscale_size == 1536
    assert EffectiveLimits.combine(ServerLimits(max_upscale_size=2048), operator).max_upscale_size == 1536
    with pytest.raises(InvalidLimit, match=r"max_upscale_size must be 256 to 1,536 \(the operator's ceiling\)"):
        validate_limit_changes({"max_upscale_size": 2048}, ServerLimits(), operator)


def test_image_input_switched_off_is_one_line() -> None:
    with pytest.raises(LimitExceeded) as caught:
        check_image_input(limits(image_input=False))
    assert str(caught.value) == "This server has switched image input off; run the command without an image."
    assert caught.value.limit == "image_input"
    check_image_input(limits())


def test_an_input_over_the_pixel_cap_is_refused_with_its_size_and_the_cap() -> None:
    with pytest.raises(LimitExceeded) as caught:
        check_input_pixels(4000, 3000, limits(max_input_megapixels=2))
    assert str(caught.value) == (
        "That image is 4000x3000 (12 megapixels); this server takes images of at most 2 megapixels. Send a smaller one."
    )
    check_input_pixels(1600, 1250, limits(max_input_megapixels=2))  # exactly 2.0: allowed


def test_an_upscale_over_the_cap_is_refused_with_both_sizes() -> None:
    with pytest.raises(LimitExceeded) as caught:
        check_request(UPSCALE, limits(max_upscale_size=768), steps_used_today=0, active_jobs=0)
    assert str(caught.value) == (
        "Upscaled ×2, 512x512 would be 1024x1024; this server allows upscales of at most 768x768. "
        "Upscale a smaller image."
    )
    assert caught.value.limit == "max_upscale_size"


def test_an_upscale_may_come_out_larger_than_the_max_image_size_when_the_upscale_cap_allows() -> None:
    effective = limits(max_image_size=512, max_upscale_size=1024)
    check_sizes(UPSCALE, effective)  # 512 in, 1024 out
    assert size_ceiling(UPSCALE, effective) == 1024
    assert size_ceiling(GenerateRequest("a fox", width=512, height=512), effective) == 512
    with pytest.raises(LimitExceeded, match="allows images of at most 512×512"):
        check_sizes(GenerateRequest("a fox", width=768, height=512), effective)
