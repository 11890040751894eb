"""What a loaded model reports: its LoRAs looked up by name (a typo, a LoRA that failed to load and a model without
LoRAs each refused in one line), the schedulers a few-step LoRA adds, and which LoRA's defaults apply."""

from __future__ import annotations

import dataclasses

import pytest

from inference.model_info import LoraInfo, ModelInfo, ModelUnavailable, UnknownLora
from inference.requests import InvalidRequest

STYLE = LoraInfo("style")
LCM = LoraInfo("lcm-lora", few_step=True, default_steps=4, default_scheduler="LCM", schedulers=("LCM",))
SD = ModelInfo("sd15", "sd", ("Euler", "Euler a"), "Euler a", 30, 7.5, (5, 10), 512, 8, loras=(STYLE, LCM))


def test_a_lora_is_found_by_its_name() -> None:
    assert SD.lora("style") is STYLE and SD.lora("lcm-lora") is LCM


def test_an_unknown_lora_names_the_close_ones_and_the_models_loras() -> None:
    with pytest.raises(UnknownLora, match=r"^Unknown LoRA 'stlye' for the model sd15 \(close: style\); its LoRAs: "):
        SD.lora("stlye")
    assert issubclass(UnknownLora, InvalidRequest)  # refused as any bad request value is


def test_a_lora_that_failed_to_load_says_why() -> None:
    model = dataclasses.replace(SD, unavailable_loras=(ModelUnavailable("broken", "its file is missing."),))
    with pytest.raises(UnknownLora, match=r"^The LoRA 'broken' didn't load on this worker: its file is missing\.$"):
        model.lora("broken")


def test_a_model_without_loras_says_to_leave_the_lora_out() -> None:
    with pytest.raises(UnknownLora, match=r"^The model sd15 has no LoRAs; leave 'style' out\.$"):
        dataclasses.replace(SD, loras=()).lora("style")


def test_a_few_step_lora_adds_its_schedulers_and_brings_its_defaults() -> None:
    assert SD.schedulers_with([("style", 1.0)]) == ("Euler", "Euler a")
    assert SD.schedulers_with([("style", 1.0), ("lcm-lora", 1.0)]) == ("Euler", "Euler a", "LCM")
    assert SD.few_step_lora([("style", 1.0)]) is None
    assert SD.few_step_lora([("style", 1.0), ("lcm-lora", 0.8)]) is LCM
