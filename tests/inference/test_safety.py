"""The image checker in the worker: loaded through `from_pretrained` like a real one (a tiny rigged ViT
classifier, or diffusers' safety checker built from a tiny CLIP config), its verdict on every picture
the engine makes (results, grid cells, film frames, previews), and a checker that can't load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor

from inference.imaging import png_pixels
from inference.models.loading import LoadedModel
from inference.protocol import JobProgress, SafetyVerdict, WorkerConfig
from inference.requests import CompareStepsRequest, GenerateRequest
from inference.safety import DEFAULT_CLASSIFIER, SafetyCheckerError, chosen_checker, load_checker
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine
from tests.safety_checkers import aim_at, save_tiny_classifier

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def _config(checker: str | Path, threshold: float = 0.5) -> WorkerConfig:
    return WorkerConfig(model="tiny", safety_checker=str(checker), safety_threshold=threshold)


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("flags", [True, False])
def test_a_classifier_loaded_from_its_folder_gives_each_picture_its_verdict(tmp_path: Path, flags: bool) -> None:
    folder = save_tiny_classifier(tmp_path / "checker", flags=flags)
    checker = load_checker(_config(folder), CPU, torch.float32)
    assert checker is not None
    verdicts = checker.check([_picture(1), _picture(2), _picture(3)])
    assert [v.flagged for v in verdicts] == [flags] * 3
    assert all((v.score > 0.99) == flags and v.checker == str(folder) for v in verdicts)


def test_the_threshold_is_the_operators(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "checker", flags=False)  # scores ~0
    strict = load_checker(_config(folder, threshold=0.0), CPU, torch.float32)
    assert strict is not None and strict.check([_picture(1)])[0].flagged


def test_a_classifier_without_an_unsafe_label_is_refused_with_what_to_do(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "cats", flags=True, labels=("cat", "dog"))
    with pytest.raises(SafetyCheckerError, match=r"labels cat, dog.*choose an NSFW classifier"):
        load_checker(_config(folder), CPU, torch.float32)


def test_a_checker_that_is_not_there_fails_to_load_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SafetyCheckerError) as error:
        load_checker(_config(tmp_path / "missing"), CPU, torch.float32)
    assert "\n" not in str(error.value) and "no picture is posted until it loads" in str(error.value)


def test_auto_means_the_default_classifier_and_none_for_test_models() -> None:
    assert chosen_checker(_config("auto")) == "none"  # the tiny model's pictures are noise
    assert chosen_checker(WorkerConfig(model="some/real-model", safety_checker="auto")) == DEFAULT_CLASSIFIER
    assert chosen_checker(_config("none")) == "none"
    assert load_checker(_config("none"), CPU, torch.float32) is None


def test_diffusers_safety_checker_loads_from_a_folder_and_flags(tmp_path: Path) -> None:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    tiny_clip = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 1,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    results = {}
    for flags in (True, False):
        model = StableDiffusionSafetyChecker(tiny_clip)
        with torch.no_grad():  # a concept's threshold below (above) any cosine similarity: always (never) flagged
            model.concept_embeds_weights.fill_(-2.0 if flags else 2.0)
            model.special_care_embeds_weights.fill_(2.0)
        folder = tmp_path / f"sd-checker-{flags}"
        model.save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
        checker = load_checker(_config(f"diffusers:{folder}"), CPU, torch.float32)
        assert checker is not None
        results[flags] = checker.check([_picture(1), _picture(2)])
    assert [v.flagged for v in results[True]] == [True, True]
    assert [v.flagged for v in results[False]] == [False, False]


def test_every_picture_the_engine_makes_carries_its_verdict(tiny: LoadedModel, tmp_path: Path) -> None:
    checker = load_checker(_config(save_tiny_classifier(tmp_path / "c", flags=True)), CPU, torch.float32)
    engine = RecordingEngine(tiny, checker=checker, previews=True)
    engine.add_job("imagine", GenerateRequest("a fox", steps=3, scheduler="Euler", width=256, height=256, count=2))
    engine.add_job("grid", CompareStepsRequest("a fox", steps=(2, 3), scheduler="Euler", width=256, height=256))
    engine.add_job("film", GenerateRequest("a fox", steps=3, scheduler="Euler", width=256, height=256, film=True))
    engine.run_until_idle()
    for job_id, cells in (("imagine", 2), ("grid", 2), ("film", 1)):
        images = engine.result(job_id).images
        assert len(images) == cells
        assert all(isinstance(image.verdict, SafetyVerdict) and image.verdict.flagged for image in images)
    film = engine.result("film").images[0]
    assert len(film.frame_verdicts) == len(film.frames) == 3 and all(v.flagged for v in film.frame_verdicts)
    previews = [e for e in engine.events if isinstance(e, JobProgress) and e.preview_png is not None]
    assert previews and all(e.preview_verdict is not None and e.preview_verdict.flagged for e in previews)


def test_without_a_checker_pictures_carry_no_verdict(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("imagine", GenerateRequest("a fox", steps=2, scheduler="Euler", width=256, height=256))
    engine.run_until_idle()
    assert engine.result("imagine").images[0].verdict is None


def test_one_flagged_cell_among_unflagged_ones_is_the_only_one_flagged(tiny: LoadedModel, tmp_path: Path) -> None:
    """The checker judges each grid cell by its own picture: aimed at one cell's picture (a middle one), it
    flags that cell only, and the others keep their pictures and unflagged verdicts."""
    checker = load_checker(_config(save_tiny_classifier(tmp_path / "c", flags=False)), CPU, torch.float32)
    assert checker is not None
    request = CompareStepsRequest("a fox", steps=(2, 3, 4, 5), scheduler="Euler", width=256, height=256, seed=11)
    first = RecordingEngine(tiny, checker=checker)
    first.add_job("read", request)
    first.run_until_idle()
    pictures = [png_pixels(image.png) for image in first.result("read").images]
    assert not any(image.flagged for image in first.result("read").images)
    aim_at(checker.model, checker.processor, pictures, chosen=1)  # the 3-step cell
    second = RecordingEngine(tiny, checker=checker)
    second.add_job("grid", request)
    second.run_until_idle()
    images = second.result("grid").images
    assert [image.flagged for image in images] == [False, True, False, False]
    assert [image.png for image in images] == [image.png for image in first.result("read").images], "same pictures"
    assert images[1].verdict is not None and images[1].verdict.score > 0.98


class CountingChecks(RecordingEngine):
    """The real engine, keeping how many pictures each call of its checker judged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[int] = []

    def verdicts(self, pictures: Sequence[np.ndarray] | np.ndarray) -> list[SafetyVerdict | None]:
        self.checks.append(len(pictures))
        return super().verdicts(pictures)


@pytest.mark.parametrize(
    ("request_", "pictures"),
    [
        (GenerateRequest("a fox", steps=3, scheduler="Euler", width=256, height=256, count=4), [4]),
        (CompareStepsRequest("a fox", steps=(2, 3, 4, 5, 6), scheduler="Euler", width=256, height=256), [5]),
    ],
)
def test_the_checker_judges_the_lanes_that_finish_together_in_one_call(
    tiny: LoadedModel, tmp_path: Path, request_: GenerateRequest | CompareStepsRequest, pictures: list[int]
) -> None:
    checker = load_checker(_config(save_tiny_classifier(tmp_path / "c", flags=False)), CPU, torch.float32)
    engine = CountingChecks(tiny, checker=checker)
    engine.add_job("job", request_)
    engine.run_until_idle()
    assert engine.checks == pictures, "one batched call for the lanes decoded together, not one per picture"
