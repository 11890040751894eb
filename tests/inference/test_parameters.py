"""The A1111 `parameters` text: built by one function, read back as A1111 reads it."""

from __future__ import annotations

import pytest

from inference.parameters import (
    exif_parameters,
    exif_user_comment,
    grid_infotext,
    image_infotext,
    infotext,
    lora_hashes_in,
)
from inference.requests import CompareStepsRequest, GenerateRequest, HiresFix
from tests.a1111 import parse_generation_parameters, piexif_user_comment, read_info_from_exif, read_user_comment


def test_an_image_reads_back_as_a1111_reads_it() -> None:
    request = GenerateRequest("a red fox in snow", steps=20, scheduler="DPM++ 2M Karras", seed=42, guidance=7.0,
                              width=512, height=768, negative_prompt="blurry")  # fmt: skip
    text = image_infotext(request, seed=42, steps=20, model="sd15")
    assert text == (
        "a red fox in snow\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15"
    )
    parsed = parse_generation_parameters(text)
    assert parsed == {
        "Prompt": "a red fox in snow",
        "Negative prompt": "blurry",
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "42",
        "Size-1": "512",
        "Size-2": "768",
        "Model": "sd15",
    }


def test_no_negative_prompt_means_no_negative_prompt_line() -> None:
    text = infotext("fox", "", steps=4, scheduler="Euler a", guidance=7.5, seed=1, width=64, height=64, model="")
    assert text == "fox\nSteps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 64x64"
    assert parse_generation_parameters(text)["Negative prompt"] == ""


@pytest.mark.parametrize("model", ["models/my, model", "name: with colon", 'quote "inside"'])
def test_values_with_commas_or_colons_are_quoted_and_read_back_whole(model: str) -> None:
    text = infotext("fox", "", steps=4, scheduler="Euler", guidance=7, seed=1, width=64, height=64, model=model)
    assert parse_generation_parameters(text)["Model"] == model


def test_a_multi_line_prompt_in_any_script_reads_back() -> None:
    prompt, negative = "café crème 狐 🦊\nsecond line, with a comma", "ugly\nblurry"
    text = infotext(prompt, negative, steps=4, scheduler="Euler", guidance=7, seed=1, width=64, height=64, model="m")
    parsed = parse_generation_parameters(text)
    assert (parsed["Prompt"], parsed["Negative prompt"]) == (prompt, negative)


def test_a_grid_carries_its_first_cell_and_the_step_axis_as_a1111s_xy_plot_does() -> None:
    request = CompareStepsRequest("fox", steps=(5, 10, 20), scheduler="Euler", seed=7, width=256, height=256)
    parsed = parse_generation_parameters(grid_infotext(request, model="tiny"))
    assert parsed["Steps"] == "5" and parsed["Seed"] == "7" and parsed["Model"] == "tiny"
    assert (parsed["Script"], parsed["X Type"], parsed["X Values"]) == ("X/Y/Z plot", "Steps", "5, 10, 20")


def test_the_exif_user_comment_is_a1111s_unicode_form() -> None:
    text = "fox 狐\nSteps: 4"
    comment = exif_user_comment(text)
    assert comment.startswith(b"UNICODE\x00") and comment[8:].decode("utf-16-be") == text
    assert read_user_comment(comment) == text


def test_the_exif_bytes_type_the_user_comment_undefined_as_piexif_reads_it() -> None:
    text = "fox 狐\nSteps: 4"
    comment = piexif_user_comment(exif_parameters(text))
    assert isinstance(comment, bytes), "UNDEFINED (type 7) comes back as bytes; BYTE would be a tuple"
    assert read_info_from_exif(exif_parameters(text)) == text


def test_loras_are_written_as_a1111_writes_them_and_read_back() -> None:
    request = GenerateRequest("a fox", steps=4, scheduler="Euler", seed=1, guidance=1.0, width=512, height=512,
                              loras=(("pixel", 0.8), ("lcm", 1.0)))  # fmt: skip
    text = image_infotext(request, seed=1, steps=4, model="sd15", lora_hashes={"pixel": "0123456789ab"})
    parsed = parse_generation_parameters(text)
    assert parsed["Prompt"] == "a fox <lora:pixel:0.8> <lora:lcm:1>"
    assert parsed["Lora hashes"] == "pixel: 0123456789ab"  # a LoRA without a known hash is left out of the field


def test_an_img2img_image_carries_its_denoising_strength_and_a_hires_one_its_pass() -> None:
    png = b"\x89PNG\r\n\x1a\n"
    img2img = GenerateRequest("a fox", steps=30, scheduler="Euler", seed=1, width=512, height=512, image=png,
                              strength=0.6)  # fmt: skip
    parsed = parse_generation_parameters(image_infotext(img2img, seed=1, steps=30, model="sd15"))
    assert parsed["Denoising strength"] == "0.6" and "Hires upscale" not in parsed
    hires = GenerateRequest("a fox", steps=20, scheduler="Euler", seed=1, width=512, height=512,
                            hires=HiresFix(steps=12, strength=0.45))  # fmt: skip
    parsed = parse_generation_parameters(image_infotext(hires, seed=1, steps=20, model="sd15"))
    assert (parsed["Steps"], parsed["Size-1"], parsed["Size-2"]) == ("20", "512", "512")
    assert parsed["Denoising strength"] == "0.45"
    assert (parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"]) == ("2", "12", "Lanczos")
    plain = parse_generation_parameters(image_infotext(GenerateRequest("a fox"), seed=1, steps=30, model=""))
    assert "Denoising strength" not in plain


def test_a_strength_grid_carries_its_first_cell_and_the_denoising_axis_as_a1111s_xyz_plot_does() -> None:
    from inference.parameters import strength_grid_infotext
    from inference.requests import CompareStrengthRequest

    request = CompareStrengthRequest("fox", strengths=(0.3, 0.45, 0.6), steps=(10, 30), scheduler="Euler", seed=7,
                                     width=256, height=256, image=b"\x89PNG")  # fmt: skip
    parsed = parse_generation_parameters(strength_grid_infotext(request, model="tiny"))
    assert (parsed["Steps"], parsed["Denoising strength"], parsed["Seed"]) == ("10", "0.3", "7")
    assert (parsed["Script"], parsed["X Type"], parsed["X Values"]) == ("X/Y/Z plot", "Denoising", "0.3, 0.45, 0.6")
    assert (parsed["Y Type"], parsed["Y Values"]) == ("Steps", "10, 30")


def test_a_cell_of_a_strength_grid_carries_its_own_strength() -> None:
    from inference.requests import CompareStrengthRequest

    request = CompareStrengthRequest("fox", strengths=(0.3, 0.6), image=b"\x89PNG")
    parsed = parse_generation_parameters(image_infotext(request, seed=1, steps=30, model="tiny", strength=0.6))
    assert parsed["Denoising strength"] == "0.6"


def test_lora_hashes_come_back_from_an_images_parameters_as_written() -> None:
    request = GenerateRequest("a fox", steps=4, loras=(("pixel", 0.8), ("lcm", 1.0)))
    hashes = {"pixel": "0123456789ab", "lcm": "ba9876543210"}
    assert lora_hashes_in(image_infotext(request, seed=1, steps=4, model="sd15", lora_hashes=hashes)) == hashes
    assert lora_hashes_in(image_infotext(request, seed=1, steps=4, model="sd15")) == {}
    assert lora_hashes_in(None) == {} and lora_hashes_in("") == {}


def test_a_lora_grid_carries_its_lora_hashes_as_a1111_reads_them() -> None:
    request = CompareStepsRequest("fox", steps=(2, 4), scheduler="Euler", seed=7, loras=(("pixel", 0.8),))
    parsed = parse_generation_parameters(grid_infotext(request, model="tiny", lora_hashes={"pixel": "0123456789ab"}))
    assert parsed["Prompt"] == "fox <lora:pixel:0.8>" and parsed["Lora hashes"] == "pixel: 0123456789ab"
    assert parsed["X Values"] == "2, 4"
