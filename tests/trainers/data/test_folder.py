"""The ImageNet-layout folder: scanning, errors, and the torchvision loader (the CPU reference)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import trainers.data as data_pkg
from study.spec import DataSpec
from tests.trainers.data.imagefolder import CLASSES, folder_spec, ids_of
from trainers.data import build_data, resolve_loader
from trainers.data.folder import scan_folder

Folder = tuple[Path, dict[int, int], dict[int, int]]


def tv(root: Path, rank: int = 0, world: int = 1, bs: int = 4, seed: int = 0, **kw: object):
    spec = folder_spec(root, "torchvision", **kw)
    return build_data(spec, batch_size=bs, rank=rank, world_size=world, seed=seed)


def test_scan_labels_follow_sorted_class_names(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    splits = scan_folder(folder_spec(root, "torchvision"))
    assert splits.classes == tuple(sorted(CLASSES))
    assert len(splits.train) == 24 and len(splits.val) == 12
    assert all(Path(p).parent.name == splits.classes[label] for p, label in splits.train + splits.val)


def test_train_batches_shapes_labels_and_description(jpeg_folder: Folder) -> None:
    root, train_labels, _ = jpeg_folder
    b = tv(root)
    assert b.num_classes == 3 and b.steps_per_epoch == 24 // 4
    assert b.description.startswith("folder (torchvision): 3 classes, 24 train / 12 val, 16 px")
    batches = list(b.train.epoch_iter(0))
    assert len(batches) == 6
    for x, y in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert [train_labels[i] for i in ids_of(x)] == y.tolist()  # the colour-coded id matches the label
    assert sorted(i for x, _ in batches for i in ids_of(x)) == list(range(24))


def test_two_ranks_disjoint_equal_shards(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    per_rank = []
    for rank in range(2):
        b = tv(root, rank, 2, bs=5)
        assert b.steps_per_epoch == (24 // 2) // 5
        per_rank.append([i for x, _ in b.train.epoch_iter(1) for i in ids_of(x)])
    assert len(per_rank[0]) == len(per_rank[1]) == 10
    assert not set(per_rank[0]) & set(per_rank[1])


def test_resume_is_the_exact_tail_augmentation_included(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    train = tv(root).train
    full, tail = list(train.epoch_iter(4)), list(train.epoch_iter(4, start=2))
    assert len(tail) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(full[2:], tail, strict=True))
    assert ids_of(full[0][0]) != ids_of(next(train.epoch_iter(5))[0])
    # Augmentation draws its own seeds: the caller's global RNG is untouched.
    state = torch.get_rng_state()
    list(train.epoch_iter(0))
    assert torch.equal(state, torch.get_rng_state())


def test_eval_splits_cover_everything_once_across_ranks(jpeg_folder: Folder) -> None:
    root, train_labels, val_labels = jpeg_folder
    seen_val, seen_train_eval = [], []
    for rank in range(2):
        b = tv(root, rank, 2, bs=4)
        batches = list(b.test)
        assert [len(y) for _, y in batches] == [4, 2]  # 6 per rank: a partial last batch, never empty
        assert all(x.shape[1:] == (3, 16, 16) for x, _ in batches)
        for x, y in batches:
            assert [val_labels[i] for i in ids_of(x)] == y.tolist()
        assert [ids_of(x) for x, _ in b.test] == [ids_of(x) for x, _ in batches]  # re-iterable, same order
        seen_val += [i for x, _ in batches for i in ids_of(x)]
        seen_train_eval += [i for x, _ in b.train_eval for i in ids_of(x)]
    assert sorted(seen_val) == sorted(val_labels)
    assert len(set(seen_train_eval)) == 10 and set(seen_train_eval) <= set(train_labels)


def test_mismatched_class_sets_raise_naming_both_folders(jpeg_folder: Folder, tmp_path: Path) -> None:
    root, _, _ = jpeg_folder
    shutil.copytree(root, tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "val" / "mango")
    (tmp_path / "ds" / "val" / "kiwi").mkdir()
    shutil.copy(next((tmp_path / "ds" / "val" / "apple").iterdir()), tmp_path / "ds" / "val" / "kiwi")
    expected = r"ds/train' and '.*ds/val' differ \(only in train: mango; only in val: kiwi\)"
    with pytest.raises(ValueError, match=expected):
        tv(tmp_path / "ds")


def test_missing_folders_raise_file_not_found_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.path: folder .*nowhere' not found; give an ImageNet"):
        tv(tmp_path / "nowhere")
    (tmp_path / "ds" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="data.val_dir: folder .*ds/val' not found"):
        tv(tmp_path / "ds")


def test_too_small_for_one_batch_per_rank_raises(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    with pytest.raises(ValueError, match="no full batch of 16 per rank on 2 rank"):
        tv(root, 0, 2, bs=16)


def test_loader_choice() -> None:
    assert resolve_loader("torchvision", cuda_available=True) == "torchvision"
    assert resolve_loader("auto", cuda_available=False) == "torchvision"
    if data_pkg.dali_available():
        assert resolve_loader("auto", cuda_available=True) == "dali"
        assert resolve_loader("dali", cuda_available=False) == "dali"


def test_asking_for_dali_without_dali_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_pkg, "dali_available", lambda: False)
    assert resolve_loader("auto", cuda_available=True) == "torchvision"
    with pytest.raises(ImportError, match="pip install nvidia-dali-cuda130 .* or nvidia-dali-cuda120"):
        resolve_loader("dali")
    with pytest.raises(ImportError, match="nvidia-dali-cuda130"):
        build_data(DataSpec(kind="folder", path="/nonexistent", loader="dali"), batch_size=4)


def test_batches_do_not_depend_on_the_number_of_loader_workers(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    inline = list(tv(root, loader_workers=0).train.epoch_iter(1))
    workers = list(tv(root, loader_workers=2).train.epoch_iter(1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(inline, workers, strict=True))
