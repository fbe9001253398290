"""A tiny ImageNet-layout JPEG folder whose every image carries its own id in its colour.

Each image is one flat colour: red = 16 + 6 * id, so after any crop, flip, resize or JPEG round trip the
mean red value still names the file. That lets the tests check shards, order and resume on the *pixels*
the loaders return, the same way for torchvision and DALI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.spec import DataSpec

# Deliberately not created in sorted order: labels must follow sorted names (ImageFolder's rule).
CLASSES = ("zebra", "apple", "mango")
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 4
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def red_of(image_id: int) -> int:
    return 16 + 6 * image_id


def ids_of(images: torch.Tensor) -> list[int]:
    """Recover each image's id from its mean red value (undoing the ImageNet normalization)."""
    red = (images[:, 0].float().mean(dim=(1, 2)).cpu() * STD[0] + MEAN[0]) * 255.0
    return [round((r - 16) / 6) for r in red.tolist()]


def _write(split: Path, per_class: int, first_id: int) -> dict[int, int]:
    """Write one split; return id -> label (label = index of the class in sorted order)."""
    labels = {}
    next_id = first_id
    for name in CLASSES:
        (split / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.empty((40, 48, 3), np.uint8)
            pixels[...] = (red_of(next_id), 255 - red_of(next_id), 128)
            Image.fromarray(pixels).save(split / name / f"img{i}.jpg", quality=95)
            labels[next_id] = sorted(CLASSES).index(name)
            next_id += 1
    return labels


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, int], dict[int, int]]:
    """``(root, train id -> label, val id -> label)``: 3 classes x 8 train, 3 x 4 val, 40x48 px."""
    root = tmp_path_factory.mktemp("imagefolder")
    train = _write(root / "train", TRAIN_PER_CLASS, 0)
    val = _write(root / "val", VAL_PER_CLASS, len(CLASSES) * TRAIN_PER_CLASS)
    return root, train, val


def folder_spec(root: Path, loader: str, **kw: object) -> DataSpec:
    kw = {"image_size": 16, "eval_resize": 20, "loader_workers": 0, "train_eval_size": 10, **kw}
    return DataSpec(kind="folder", path=str(root), loader=loader, **kw)
