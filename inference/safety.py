"""The image checker: every picture the worker would send (results, grid cells, film frames, previews)
gets a verdict here, on the worker's device, before its bytes leave the worker.

The operator picks the checker (`STEPGRID_SAFETY_CHECKER`):
- an image classifier's hub id or folder, loaded with `AutoModelForImageClassification` and its image
  processor; the default is `Falconsai/nsfw_image_detection` (a ViT, Apache-2.0; see docs/safety.md);
- `diffusers` (or `diffusers:SOURCE`): diffusers' `StableDiffusionSafetyChecker` with its CLIP processor;
- `none`: no checker (said loudly at start); `auto`: the default classifier, or none when every model is
  a built-in random-weight test model (its images are noise).
A checker that fails to load fails the worker (`SafetyCheckerError`): nothing is ever sent unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.protocol import DEFAULT_SAFETY_CLASSIFIER, SAFETY_CHECKER_FAILED, SafetyVerdict, WorkerConfig

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = DEFAULT_SAFETY_CLASSIFIER
DIFFUSERS_CHECKER = "diffusers"
DIFFUSERS_SOURCE = "CompVis/stable-diffusion-safety-checker"
# Labels of an image classifier whose probabilities add up to the unsafe score.
UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "unsafe", "explicit"})


class SafetyCheckerError(RuntimeError):
    """The checker could not be loaded; the message is one line naming what to fix."""


def chosen_checker(config: WorkerConfig) -> str:
    """What the setting means for these models: "none", "diffusers:SOURCE" or a classifier's source."""
    setting = config.safety_checker.strip()
    if setting.casefold() == "auto":
        return "none" if all(spec.is_test_model for spec in config.models) else DEFAULT_CLASSIFIER
    if setting.casefold() == DIFFUSERS_CHECKER:
        return f"{DIFFUSERS_CHECKER}:{DIFFUSERS_SOURCE}"
    return setting or "none"


@dataclass
class ImageChecker:
    """A loaded checker: a batch of HxWx3 uint8 pictures in, one verdict each out."""

    name: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def check(self, pictures: Sequence[np.ndarray] | np.ndarray) -> list[SafetyVerdict]:
        return self.verdicts(list(pictures)) if len(pictures) else []

    def verdicts(self, pictures: list[np.ndarray]) -> list[SafetyVerdict]:
        """The verdicts of a batch of at least one picture."""
        raise NotImplementedError


@dataclass
class ClassifierChecker(ImageChecker):
    """A Hugging Face image classifier: the unsafe score is the summed probability of its unsafe labels."""

    unsafe: tuple[int, ...] = ()  # the label ids that count as unsafe
    threshold: float = 0.5

    def verdicts(self, pictures: list[np.ndarray]) -> list[SafetyVerdict]:
        inputs = self.processor(images=pictures, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        probabilities = self.model(pixel_values=pixels).logits.float().softmax(dim=-1)
        scores = probabilities[:, list(self.unsafe)].sum(dim=-1).tolist()
        return [SafetyVerdict(score >= self.threshold, round(score, 4), self.name) for score in scores]


@dataclass
class DiffusersChecker(ImageChecker):
    """diffusers' StableDiffusionSafetyChecker (CLIP concept embeddings with its own thresholds):
    its verdict is yes or no, so the score is 1 or 0."""

    def verdicts(self, pictures: list[np.ndarray]) -> list[SafetyVerdict]:
        clip_input = self.processor(images=pictures, return_tensors="pt")["pixel_values"]
        images = np.stack([picture.astype(np.float32) / 255 for picture in pictures])
        _, flagged = self.model(images=images, clip_input=clip_input.to(self.device, self.dtype))
        return [SafetyVerdict(bool(nsfw), 1.0 if nsfw else 0.0, self.name) for nsfw in flagged]


def load_checker(config: WorkerConfig, device: torch.device, dtype: torch.dtype) -> ImageChecker | None:
    """The checker the operator chose, on the models' device; None for "none". Raises SafetyCheckerError."""
    choice = chosen_checker(config)
    if choice.casefold() == "none":
        return None
    cache = str(Path(config.cache_dir) / "hub") if config.cache_dir else None
    try:
        if choice.startswith(f"{DIFFUSERS_CHECKER}:"):
            return _load_diffusers(choice.partition(":")[2], cache, device, dtype)
        return _load_classifier(choice, cache, config.safety_threshold, device, dtype)
    except SafetyCheckerError:
        raise
    except Exception as error:  # OSError (not found, offline), ValueError (not a classifier), ...
        first = str(error).strip().split("\n")[0][:200] or type(error).__name__
        raise SafetyCheckerError(
            f"{SAFETY_CHECKER_FAILED} {choice!r} could not be loaded ({first}); no picture is posted until it "
            "loads: fix STEPGRID_SAFETY_CHECKER (a hub id or folder of an image classifier, 'diffusers', or 'none')."
        ) from error


def _load_classifier(
    source: str, cache: str | None, threshold: float, device: torch.device, dtype: torch.dtype
) -> ClassifierChecker:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source, cache_dir=cache)
    processor = AutoImageProcessor.from_pretrained(source, cache_dir=cache)
    labels: dict[int, str] = dict(model.config.id2label)
    unsafe = tuple(index for index, label in labels.items() if label.strip().casefold() in UNSAFE_LABELS)
    if not unsafe:
        raise SafetyCheckerError(
            f"The image classifier {source!r} has the labels {', '.join(labels.values())}, none of which means "
            f"unsafe ({', '.join(sorted(UNSAFE_LABELS))}): choose an NSFW classifier for STEPGRID_SAFETY_CHECKER."
        )
    model = model.to(device, dtype).eval()
    return ClassifierChecker(source, model, processor, device, dtype, unsafe=unsafe, threshold=threshold)


def _load_diffusers(source: str, cache: str | None, device: torch.device, dtype: torch.dtype) -> DiffusersChecker:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    model: Any = StableDiffusionSafetyChecker.from_pretrained(source, cache_dir=cache)
    model = model.to(device, dtype).eval()
    processor = CLIPImageProcessor.from_pretrained(source, cache_dir=cache)
    return DiffusersChecker(f"{DIFFUSERS_CHECKER}:{source}", model, processor, device, dtype)
