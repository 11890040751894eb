"""Tiny random-weight image checkers whose decision the test chooses, saved with `save_pretrained` so the
worker loads them through the same `from_pretrained` path as a real one (STEPGRID_SAFETY_CHECKER=folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

SIDE = 32


def save_tiny_classifier(folder: Path, *, flags: bool, labels: tuple[str, str] = ("normal", "nsfw")) -> Path:
    """A ViT classifier with labels (safe, unsafe) whose head's bias makes one label always win:
    the unsafe one when `flags`, so every picture scores ~1 (flagged) or ~0."""
    config = ViTConfig(
        image_size=SIDE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 12.0] if flags else [12.0, 0.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


def aim_at(
    model: ViTForImageClassification, processor: ViTImageProcessor, pictures: list[np.ndarray], chosen: int
) -> None:
    """Set a loaded classifier's head (labels normal, nsfw) so that of `pictures` it flags exactly the one at
    `chosen`: its unsafe logit margin is +4 there and -4 on each of the others (solved from the pictures'
    features; a picture's decision then depends on its content, as a real checker's does)."""
    with torch.no_grad():
        pixels = processor(images=pictures, return_tensors="pt")["pixel_values"].to(model.dtype)
        features = model.vit(pixel_values=pixels).last_hidden_state[:, 0, :]  # what the head reads
        features = torch.cat([features, torch.ones(len(pictures), 1)], dim=1)  # and a bias
        targets = torch.tensor([4.0 if i == chosen else -4.0 for i in range(len(pictures))])
        solution = torch.linalg.pinv(features) @ targets
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[1] = solution[:-1]
        model.classifier.bias[1] = solution[-1]
