"""The DALI folder loader, on DALI's CPU backend: same files, labels, order and shapes as torchvision.

The pipeline's construction (arguments, device choice, sharding) is checked as plain data; the graph
itself runs on the CPU here. On a GPU host the same graph runs with ``"mixed"`` decoding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainers.data.imagefolder import folder_spec, ids_of
from trainers.data import build_data, dali_available

pytestmark = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not installed")

Folder = tuple[Path, dict[int, int], dict[int, int]]
CPU = torch.device("cpu")


def bundles(root: Path, rank: int = 0, world: int = 1, bs: int = 4, seed: int = 0):
    """(torchvision, dali) bundles of the same spec and rank."""
    return tuple(build_data(folder_spec(root, loader), batch_size=bs, rank=rank, world_size=world, seed=seed,
                            device=CPU) for loader in ("torchvision", "dali"))


def test_device_choice() -> None:
    from trainers.data.folder_dali import dali_device

    assert dali_device(CPU) == (None, "cpu")
    assert dali_device(torch.device("cuda", 3)) == (3, "mixed")
    if not torch.cuda.is_available():
        assert dali_device(None) == (None, "cpu")


def test_pipeline_plan_reads_this_ranks_permuted_files_in_order(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    tv, dali = bundles(root, rank=1, world=2, bs=5, seed=3)
    plan = dali.train.plan(epoch=2)
    assert plan.training and plan.device_id is None and plan.decoder == "cpu" and plan.batch_size == 5
    assert plan.reader_args()["random_shuffle"] is False and plan.reader_args()["name"] == "Reader"
    keys = tv.train.keys(2)
    assert plan.files == tuple(tv.train.dataset.samples[i][0] for i, _ in keys)
    assert plan.labels == tuple(tv.train.dataset.samples[i][1] for i, _ in keys)
    resumed = dali.train.plan(epoch=2, start=1)
    assert resumed.files == plan.files[5:] and resumed.seed != plan.seed
    assert dali.description.startswith("folder (dali, cpu decoding): 3 classes, 24 train / 12 val")


def test_same_shapes_labels_and_order_as_torchvision(jpeg_folder: Folder) -> None:
    root, train_labels, _ = jpeg_folder
    tv, dali = bundles(root)
    assert dali.steps_per_epoch == tv.steps_per_epoch == 6 and dali.num_classes == 3
    tv_batches, dali_batches = list(tv.train.epoch_iter(1)), list(dali.train.epoch_iter(1))
    assert len(dali_batches) == 6
    for (xt, yt), (xd, yd) in zip(tv_batches, dali_batches, strict=True):
        assert xd.shape == xt.shape == (4, 3, 16, 16) and xd.dtype == torch.float32
        assert yd.dtype == torch.int64 and yd.shape == (4,)
        assert ids_of(xd) == ids_of(xt) and torch.equal(yd, yt)  # the same files, in the same order
        assert [train_labels[i] for i in ids_of(xd)] == yd.tolist()
        assert torch.allclose(xd.mean(dim=(2, 3)), xt.mean(dim=(2, 3)), atol=0.1)  # same normalization


def test_two_ranks_disjoint_and_resume_is_the_tail(jpeg_folder: Folder) -> None:
    root, _, _ = jpeg_folder
    per_rank = []
    for rank in range(2):
        _, dali = bundles(root, rank, 2, bs=5)
        per_rank.append([i for x, _ in dali.train.epoch_iter(0) for i in ids_of(x)])
    assert len(per_rank[0]) == len(per_rank[1]) == 10 and not set(per_rank[0]) & set(per_rank[1])
    _, dali = bundles(root)
    full = [ids_of(x) for x, _ in dali.train.epoch_iter(3)]
    assert [ids_of(x) for x, _ in dali.train.epoch_iter(3, start=4)] == full[4:]
    assert full != [ids_of(x) for x, _ in dali.train.epoch_iter(4)]


def test_eval_matches_torchvision_partial_batches_and_reiterates(jpeg_folder: Folder) -> None:
    root, _, val_labels = jpeg_folder
    seen = []
    for rank in range(2):
        tv, dali = bundles(root, rank, 2, bs=4)
        for split in ("test", "train_eval"):
            tv_b, dali_b = list(getattr(tv, split)), list(getattr(dali, split))
            assert [len(y) for _, y in dali_b] == [len(y) for _, y in tv_b]
            for (xt, yt), (xd, yd) in zip(tv_b, dali_b, strict=True):
                assert xd.shape == xt.shape and torch.equal(yd, yt) and ids_of(xd) == ids_of(xt)
                assert torch.allclose(xd, xt, atol=0.1)  # a flat image resized and centre-cropped
        batches = list(dali.test)
        assert [len(y) for _, y in batches] == [4, 2]
        assert [ids_of(x) for x, _ in dali.test] == [ids_of(x) for x, _ in batches]
        it = iter(dali.test)
        next(it)  # an abandoned pass: the next one still starts from the top
        assert [ids_of(x) for x, _ in dali.test] == [ids_of(x) for x, _ in batches]
        seen += [i for x, _ in batches for i in ids_of(x)]
    assert sorted(seen) == sorted(val_labels)
