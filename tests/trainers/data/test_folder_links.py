"""Links in an image folder (issue 23 §4): each file and folder is counted once, whatever the links.

The listing follows links (a data set made of links to another copy is common), but identifies a file or
folder by its target: reached again in the same class it is listed once (counted, one warning); reached again
in another class or the other split it is an error naming both paths. Links that loop are walked once.
Without links, the listing is torchvision's ``ImageFolder``'s, file for file and label for label.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from tests.trainers.data.imagefolder import folder_spec
from trainers.data.folder import scan_folder


def make(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 20 * k + i, np.uint8)).save(d / f"img{i}.png")
    return root


def scan(root: Path):
    return scan_folder(folder_spec(root, "torchvision"))


def counts(root: Path) -> dict[str, int]:
    return scan(root).class_counts("train")


def test_without_links_the_listing_is_imagefolders(tmp_path):
    root = make(tmp_path / "d")
    (root / "train" / "cat" / "nested" / "deeper").mkdir(parents=True)  # sub-folders, as ImageFolder walks them
    shutil.copy(root / "train" / "dog" / "img0.png", root / "train" / "cat" / "nested" / "deeper" / "x.png")
    shutil.copy(root / "train" / "dog" / "img1.png", root / "train" / "cat" / "nested" / "y.png")
    splits = scan(root)
    assert list(splits.train) == [(p, y) for p, y in ImageFolder(str(root / "train")).samples]
    assert list(splits.val) == [(p, y) for p, y in ImageFolder(str(root / "val")).samples]


def test_a_folder_link_back_into_the_tree_no_longer_multiplies_a_class(tmp_path, caplog):
    """The issue's case: a link inside a class to its own folder (ImageFolder walks it again and again,
    until the path is too long) or to a folder of the same class listed the class's files many times over."""
    root = make(tmp_path / "d")
    cat = root / "train" / "cat"
    os.symlink(cat, cat / "loop")  # a cycle
    os.symlink("img0.png", cat / "again.png")  # a second name for one file
    os.link(cat / "img1.png", cat / "hard.png")  # a hard link: the same file too
    assert len([p for p, y in ImageFolder(str(root / "train")).samples if y == 0]) > 3  # what links did
    with caplog.at_level(logging.WARNING, logger="normstudy.data"):
        splits = scan(root)
    assert splits.class_counts("train") == {"cat": 3, "dog": 3} and splits.duplicates == 3  # 2 links, the loop
    kept = [os.path.realpath(p) for p, _ in splits.train if Path(p).parent == cat]  # the first name of each, sorted
    assert sorted({os.stat(p).st_ino for p in kept}) == sorted(os.stat(cat / f"img{i}.png").st_ino for i in range(3))
    warned = [r.getMessage() for r in caplog.records if "counted once" in r.getMessage()]
    assert len(warned) == 1 and "3 file(s) or folder(s)" in warned[0]


def test_a_file_or_folder_in_two_classes_or_both_splits_is_an_error_naming_both(tmp_path):
    root = make(tmp_path / "a")
    os.symlink(root / "train" / "cat" / "img0.png", root / "train" / "dog" / "stray.png")
    with pytest.raises(ValueError, match=r"^data: '.*/train/dog/stray.png' \(in train/dog\) is the same file or folder "
                                         r"as '.*/train/cat/img0.png' \(in train/cat\)"):
        scan(root)
    root = make(tmp_path / "b")
    os.symlink(root / "train" / "dog", root / "train" / "cat" / "dogs")  # a whole class linked into another
    with pytest.raises(ValueError, match=r"is the same file or folder as '.*/train/cat/dogs' \(in train/cat\)"):
        scan(root)
    root = make(tmp_path / "c")
    os.link(root / "train" / "cat" / "img0.png", root / "val" / "cat" / "leak.png")  # a test image trained on
    with pytest.raises(ValueError, match=r"\(in val/cat\) is the same file or folder as .* \(in train/cat\)"):
        scan(root)


def test_links_out_of_the_tree_are_followed_and_a_dangling_one_is_named(tmp_path):
    """A data set of links to another copy (a subset made with `ln -s`) is read through its links."""
    store = make(tmp_path / "store")
    root = tmp_path / "subset"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            os.symlink(store / split / name / "img0.png", root / split / name / "a.png")
    os.symlink(store / "train" / "dog", root / "train" / "dog" / "more")  # a folder link out of the tree
    assert counts(root) == {"cat": 1, "dog": 1 + 2}  # dog's img0 through 'more' is a.png again: once
    os.symlink(tmp_path / "gone.png", root / "train" / "cat" / "b.png")
    with pytest.raises(ValueError, match=r"^data: '.*/subset/train/cat/b.png' is a link to a missing file"):
        scan(root)
