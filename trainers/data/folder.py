"""An ImageNet-layout folder, scanned once and shared by the torchvision and DALI loaders.

``<path>/<train_dir>/<class>/<image>`` and ``<path>/<val_dir>/<class>/<image>``. Both loaders read the
same list made here with torchvision's own scanner (sorted class names → labels 0..C-1, sorted files,
ImageFolder's extensions), so a DALI run and a torchvision run label every image identically, and the
shared index arithmetic in :mod:`trainers.data.base` picks the same files for a rank in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from study.spec import DataSpec

# ImageNet statistics (torchvision's reference recipe): [0, 1] scale for torchvision, x255 for DALI.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FolderSplits:
    """Both splits of a folder: ``(path, label)`` lists in sorted order, and the class names."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    train_root: Path
    val_root: Path


def scan_folder(data: DataSpec) -> FolderSplits:
    """Scan train and val; raise FileNotFoundError / ValueError with the path and the fix."""
    if not data.path:
        raise ValueError("data.path: required when data.kind is 'folder'; give an ImageNet-layout folder")
    root = Path(data.path).expanduser().absolute()  # workers may change directory later
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.path: folder '{root}' not found; give an ImageNet-layout folder "
            f"(with {data.train_dir}/ and {data.val_dir}/ inside) or use data.kind: generated"
        )
    train_root, val_root = root / data.train_dir, root / data.val_dir
    for field, split in (("data.train_dir", train_root), ("data.val_dir", val_root)):
        if not split.is_dir():
            raise FileNotFoundError(
                f"{field}: folder '{split}' not found; {root} needs one sub-folder per class in "
                f"{data.train_dir}/ and {data.val_dir}/, or set {field} to the right name"
            )
    train_classes, class_to_idx = _classes(train_root)
    val_classes, _ = _classes(val_root)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"data: class folders of '{train_root}' and '{val_root}' differ "
            f"(only in train: {_few(only_train)}; only in val: {_few(only_val)}); "
            "both splits need the same class sub-folders"
        )
    train = _samples(train_root, class_to_idx)
    val = _samples(val_root, class_to_idx)
    return FolderSplits(tuple(train_classes), train, val, train_root, val_root)


def _classes(split: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(split))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"data: '{split}' has no class sub-folders; put each class's images in its own sub-folder"
        ) from None


def _samples(split: Path, class_to_idx: dict[str, int]) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(make_dataset(str(split), class_to_idx, extensions=IMG_EXTENSIONS))
    except FileNotFoundError as err:  # torchvision: a class folder without a single image
        raise FileNotFoundError(f"data: {err}".replace("\n", " ")) from None


def _few(names: list[str], n: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def describe(loader: str, splits: FolderSplits, data: DataSpec) -> str:
    return (f"folder ({loader}): {len(splits.classes)} classes, {len(splits.train)} train / "
            f"{len(splits.val)} val, {data.image_size} px, {splits.train_root.parent}")
