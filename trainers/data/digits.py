"""Real handwritten digits, shipped inside scikit-learn (no download): the ``digits`` data kind.

The UCI optical-recognition digits (Alpaydin & Kaynak 1998; ``sklearn.datasets.load_digits``): 1,797
8×8 grey images of 0–9 with 17 intensity levels, ~180 a class, written of its own accord once into an
ImageNet-layout folder (``train/<class>/*.png``, ``val/<class>/*.png``: upsampled, RGB, a fixed stratified
split), which the ordinary ``folder`` loaders (torchvision and DALI) then read. So a real data set runs
through the real file path — decoding, augmentation, sharding — on any machine.

The folder is written to a temporary sibling and renamed into place, so concurrent trials never see a
half-written folder; ``digits.json`` in it records how it was made, and a folder made differently is
refused rather than silently reused.

    python -m trainers.data.digits --out /data/digits      # write it by hand (e.g. for a cluster)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "digits.json"
DEFAULT_PATH = "normstudy_data/digits"


def _layout(image_size: int, val_fraction: float, seed: int) -> dict:
    return {"source": "sklearn.datasets.load_digits", "image_size": image_size, "val_fraction": val_fraction,
            "seed": seed, "format": "png-rgb"}


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the validation samples: ``val_fraction`` of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(val_fraction * len(idx)))
        is_val[rng.permutation(idx)[:n_val]] = True
    return is_val


def write_digits_folder(root: str | Path, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write (once) the digits as an ImageNet-layout folder at ``root``; return ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    layout = _layout(image_size, val_fraction, seed)
    manifest = root / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text(encoding="utf-8"))
        if {k: found.get(k) for k in layout} != layout:
            raise ValueError(f"data.path: {root} holds digits written differently ({found}); remove it or "
                             f"point data.path elsewhere")
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"data.path: {root} exists and is not a digits folder; point data.path at a new folder")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 17 levels 0..16 -> 0..255
    labels = digits.target.astype(int)
    is_val = stratified_split(labels, val_fraction, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for i, (img, label, val) in enumerate(zip(images, labels, is_val, strict=True)):
            folder = tmp / ("val" if val else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(img, mode="L").resize((image_size, image_size), Image.BILINEAR).convert("RGB")
            pil.save(folder / f"{i:04d}.png")
        counts = {"train": int((~is_val).sum()), "val": int(is_val.sum())}
        (tmp / MANIFEST).write_text(json.dumps({**layout, **counts}, indent=1) + "\n", encoding="utf-8")
        try:
            if root.exists():
                root.rmdir()  # an empty folder the user made for it
            os.rename(tmp, root)
        except OSError:
            if not (root / MANIFEST).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write scikit-learn's digits as an ImageNet-layout folder.")
    p.add_argument("--out", default=DEFAULT_PATH)
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args(argv)
    root = write_digits_folder(args.out, args.image_size)
    print(json.loads((root / MANIFEST).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
