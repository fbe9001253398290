"""The ``digits`` kind: scikit-learn's real digits written once as an ImageNet-layout folder and read by
the ordinary folder loaders (torchvision and DALI alike)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from study.spec import SpecError, load
from trainers.data import build_data, dali_available
from trainers.data.digits import MANIFEST, stratified_split, write_digits_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("d") / "digits", image_size=16)


def test_folder_holds_all_1797_images_as_rgb_pngs_with_a_stratified_split(digits_root):
    train = sorted((digits_root / "train").glob("*/*.png"))
    val = sorted((digits_root / "val").glob("*/*.png"))
    assert len(train) + len(val) == 1797
    manifest = json.loads((digits_root / MANIFEST).read_text())
    assert (manifest["train"], manifest["val"]) == (len(train), len(val))
    per_class_val = Counter(p.parent.name for p in val)
    per_class_all = Counter(p.parent.name for p in train + val)
    assert sorted(per_class_val) == [str(c) for c in range(10)]
    for c, n in per_class_all.items():
        assert abs(per_class_val[c] - 0.2 * n) <= 1  # 20% of every class
    with Image.open(train[0]) as im:
        assert im.mode == "RGB" and im.size == (16, 16)
    # real content, not blank: digits have dark background and bright strokes
    arr = np.asarray(Image.open(val[0]))
    assert arr.min() == 0 and arr.max() > 150


def test_split_is_fixed_and_a_rewrite_is_a_no_op(digits_root):
    labels = np.repeat(np.arange(3), 10)
    assert (stratified_split(labels, 0.2, 0) == stratified_split(labels, 0.2, 0)).all()
    assert stratified_split(labels, 0.2, 0).sum() == 6
    before = sorted(p.name for p in (digits_root / "val").glob("*/*.png"))
    write_digits_folder(digits_root, image_size=16)
    assert sorted(p.name for p in (digits_root / "val").glob("*/*.png")) == before


def test_a_folder_written_differently_or_foreign_is_refused(digits_root, tmp_path):
    with pytest.raises(ValueError, match="data.path: .* written differently"):
        write_digits_folder(digits_root, image_size=32)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a digits folder"):
        write_digits_folder(foreign)
    assert (foreign / "x.txt").read_text() == "mine"


def _spec(root, loader):
    return load("specs/digits.yaml", [f"data.path={root}", f"data.loader={loader}", "data.train_eval_size=64"]).data


@pytest.mark.parametrize("loader", ["torchvision", "dali"])
def test_both_folder_loaders_read_it(digits_root, loader):
    if loader == "dali" and not dali_available():
        pytest.skip("nvidia.dali is not installed")  # pragma: no cover - it is a dependency
    bundle = build_data(_spec(digits_root, loader), batch_size=32, device=CPU)
    assert bundle.num_classes == 10
    x, y = next(bundle.train.epoch_iter(0))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 9
    total = sum(len(b[1]) for b in bundle.test)
    assert total == 359


def test_digits_kind_defaults_its_path_and_validates_crop_scale():
    assert load(None, ["data.kind=digits"]).data.path == "normstudy_data/digits"
    with pytest.raises(SpecError, match="data.crop_scale"):
        load(None, ["data.crop_scale=[0.5,2.0]"])
