"""Tiny random-weight image checkers whose decision the test chooses, saved with `save_pretrained` so the
worker loads them through the same `from_pretrained` path as a real one (STEPGRID_SAFETY_CHECKER=folder)."""

from __future__ import annotations

from pathlib import Path

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
