"""The operator's model registry: TOML in a file or an environment value, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.protocol import WorkerConfig
from inference.registry import (
    ALLOWED_KEYS,
    LoraSpec,
    ModelSpec,
    RegistryError,
    load_registry,
    models_from_setting,
    parse_registry,
)

EXAMPLE = """
[[models]]
name = "sd15"
source = "stable-diffusion-v1-5/stable-diffusion-v1-5"

[[models]]
name = "sdxl-turbo"
source = "stabilityai/sdxl-turbo"
variant = "fp16"
revision = "0123abc"
steps = 4
guidance = 0.0
compare_steps = [1, 2, 3, 4, 6, 8]
max_steps = 8
few_step = true
"""


def test_a_registry_file_lists_models_with_the_first_the_default(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(EXAMPLE)
    sd15, turbo = load_registry(path)
    assert sd15 == ModelSpec(name="sd15", source="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert turbo == ModelSpec(name="sdxl-turbo", source="stabilityai/sdxl-turbo", variant="fp16", revision="0123abc",
                              steps=4, guidance=0.0, compare_steps=(1, 2, 3, 4, 6, 8), max_steps=8,
                              few_step=True)  # fmt: skip
    assert models_from_setting(str(path)) == (sd15, turbo)


def test_one_line_of_toml_works_in_an_environment_variable() -> None:
    specs = models_from_setting('models = [{name = "a", source = "tiny"}, {name = "b", source = "tiny-flux"}]')
    assert [(spec.name, spec.source, spec.is_test_model) for spec in specs] == [("a", "tiny", True),
                                                                               ("b", "tiny-flux", True)]  # fmt: skip


def test_one_model_is_the_shorthand_and_the_worker_config_takes_either() -> None:
    assert models_from_setting("stabilityai/sdxl-turbo") == (
        ModelSpec("stabilityai/sdxl-turbo", "stabilityai/sdxl-turbo"),
    )
    config = WorkerConfig(model="tiny")
    assert config.models == (ModelSpec("tiny", "tiny"),) and config.model_names == ("tiny",)
    registry = WorkerConfig(models=(ModelSpec("a", "tiny"), ModelSpec("b", "tiny-sdxl")))
    assert registry.model == "a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nname = "a"\nsoruce = "tiny"',
         f"model 1: unknown key 'soruce'; allowed keys: {', '.join(ALLOWED_KEYS)}."),
        ('[[models]]\nname = "a"', "model 1: missing 'source' (every model needs a name and a source)."),
        ('[[models]]\nsource = "tiny"', "model 1: missing 'name'"),
        ('[[models]]\nname = "a"\nsource = "tiny"\n[[models]]\nname = "a"\nsource = "tiny-flux"',
         "the model name 'a' is used twice; names must be unique."),
        ('[[models]]\nname = "a"\nsource = "tiny"\nsteps = "four"', "model 'a': 'steps' must be a whole number from 1"),
        ('[[models]]\nname = "a"\nsource = "tiny"\nsteps = 10\nmax_steps = 8',
         "'steps' (10) is above 'max_steps' (8)."),
        ('[[models]]\nname = "a"\nsource = "tiny"\ncompare_steps = [1, 0]',
         "'compare_steps' must be 2 to 12 different step counts from 1 to 150, like [1, 2, 4, 8]."),
        ('[[models]]\nname = "a"\nsource = "tiny"\ncompare_steps = [4]', "'compare_steps' must be 2 to 12"),
        ('[[models]]\nname = "a"\nsource = "tiny"\ncompare_steps = [4, 4]', "'compare_steps' must be 2 to 12"),
        ('[[models]]\nname = "a"\nsource = "tiny"\nsteps = 200', "'steps' must be a whole number from 1 to 150"),
        ('[[models]]\nname = "a"\nsource = "tiny"\nguidance = 31', "'guidance' must be a number from 0 to 30"),
        ('[[models]]\nname = "a"\nsource = "tiny"\nfew_step = "yes"', "'few_step' must be true or false; got 'yes'"),
        ('[[models]]\nname = "A b"\nsource = "tiny"', "a name is 1-40 lower-case letters"),
        ('[[model]]\nname = "a"\nsource = "tiny"', "unknown top-level key 'model'; write the models as [[models]]"),
        ("", "lists no models"),
        ("[[models]\nname", "is not valid TOML"),
    ],
)  # fmt: skip
def test_registry_mistakes_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(RegistryError) as error:
        parse_registry(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_registry_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"can't read the model registry .*models\.toml"):
        models_from_setting(str(tmp_path / "models.toml"))


LORAS = """
[[models]]
name = "sd15"
source = "tiny"

  [[models.loras]]
  name = "pixel"
  source = "/loras/pixel-art.safetensors"
  weight = 0.8
  triggers = ["pixel art", "8-bit"]

  [[models.loras]]
  name = "lcm"
  source = "latent-consistency/lcm-lora-sdv1-5"
  weight_name = "pytorch_lora_weights.safetensors"
  few_step = true
"""


def test_a_model_lists_its_loras_a_local_file_or_a_hub_id_with_weight_name() -> None:
    (spec,) = parse_registry(LORAS)
    pixel, lcm = spec.loras
    assert pixel == LoraSpec("pixel", "/loras/pixel-art.safetensors", weight=0.8, triggers=("pixel art", "8-bit"))
    assert pixel.is_local_file and not lcm.is_local_file
    assert (lcm.weight_name, lcm.few_step, lcm.weight) == ("pytorch_lora_weights.safetensors", True, 1.0)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ('name = "x"', "missing 'source'"),
        ('name = "x"\nsource = "/a.safetensors"\nweight = 3', "'weight' must be a number from -2 to 2"),
        ('name = "x"\nsource = "/a.safetensors"\ntriggers = "pixel"', "'triggers' must be a list of words"),
        ('name = "x"\nsource = "/a.safetensors"\nstrength = 1', "unknown key 'strength'"),
        ('name = "X Y"\nsource = "/a.safetensors"', "a name is 1-40 lower-case"),
    ],
)
def test_a_bad_lora_entry_is_one_line_naming_it(lora: str, message: str) -> None:
    text = f'[[models]]\nname = "m"\nsource = "tiny"\n[[models.loras]]\n{lora}\n'
    with pytest.raises(RegistryError, match=message) as caught:
        parse_registry(text)
    assert "\n" not in str(caught.value)


def test_a_lora_name_used_twice_in_one_model_is_refused() -> None:
    lora = '[[models.loras]]\nname = "x"\nsource = "/a.safetensors"\n'
    with pytest.raises(RegistryError, match="LoRA name 'x' is used twice"):
        parse_registry(f'[[models]]\nname = "m"\nsource = "tiny"\n{lora}{lora}')
