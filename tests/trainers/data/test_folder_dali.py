"""The DALI folder loader, on DALI's CPU backend: same files, labels, order and shapes as torchvision.

The pipeline's construction (arguments, device choice, sharding) is checked as plain data; the graph
itself runs on the CPU here. On a GPU host the same graph runs with ``"mixed"`` decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    assert plan.source is not None and plan.files == () and not plan.labels_on_device
    for k, epoch in ((0, 2), (1, 3)):  # the pipeline's k-th pass is epoch 2 + k
        keys = tv.train.keys(epoch)
        assert plan.source.files(k) == tuple(tv.train.dataset.samples[i][0] for i, _ in keys)
        assert [plan.source.labels[i] for i in plan.source.indices(k)] == [tv.train.dataset.samples[i][1]
                                                                            for i, _ in keys]
    resumed = dali.train.plan(epoch=2, start=1)
    assert resumed.source.files(0) == plan.source.files(0)[5:] and resumed.seed != plan.seed
    assert resumed.source.files(1) == plan.source.files(1)  # later passes start at their first batch
    assert dali.description.startswith("folder (dali, cpu decoding): 3 classes, 24 train / 12 val")


def test_the_source_ends_each_pass_after_its_last_sample(jpeg_folder: Folder) -> None:
    from types import SimpleNamespace

    root, train_labels, _ = jpeg_folder
    _, dali = bundles(root, bs=4)
    source = dali.train.plan(epoch=0, start=4).source  # 6 batches an epoch: pass 0 has 2 left, pass 1 all 6
    data, label = source(SimpleNamespace(epoch_idx=0, idx_in_epoch=7))
    assert data.dtype == np.uint8 and bytes(data[:3]) == b"\xff\xd8\xff"  # the file's JPEG bytes, undecoded
    assert label.dtype == np.int32 and label.shape == (1,)
    with pytest.raises(StopIteration):
        source(SimpleNamespace(epoch_idx=0, idx_in_epoch=8))
    source(SimpleNamespace(epoch_idx=1, idx_in_epoch=23))
    with pytest.raises(StopIteration):
        source(SimpleNamespace(epoch_idx=1, idx_in_epoch=24))


def test_a_cuda_plan_moves_labels_inside_the_pipeline_and_spawns_its_readers() -> None:
    """No GPU needed: the plan for a CUDA device is plain data."""
    from trainers.data.folder_dali import DaliTrain

    spec = folder_spec(Path("/nowhere"), "dali", loader_workers=3)
    train = DaliTrain([("a.jpg", 0)] * 8, data=spec, batch_size=4, rank=0, world_size=1, seed=0,
                      device=torch.device("cuda", 2))
    plan = train.plan(epoch=0)
    assert plan.device_id == 2 and plan.decoder == "mixed" and plan.labels_on_device
    assert plan.py_workers == 3 and plan.pipeline_args()["py_start_method"] == "spawn"  # fork cannot carry CUDA


def test_to_batch_copies_host_labels_to_the_images_device_without_waiting() -> None:
    """A mocked device: labels on the host next to images on a GPU are pinned, then copied non-blocking."""
    from trainers.data.folder_dali import to_batch

    calls: list[tuple[str, dict]] = []

    class HostLabels:
        device = torch.device("cpu")

        def reshape(self, *shape):
            return self

        def pin_memory(self):
            calls.append(("pin_memory", {}))
            return self

        def to(self, *args, **kwargs):
            calls.append(("to", {"args": args, **kwargs}))
            return self

    images = type("GpuImages", (), {"device": torch.device("cuda", 0)})()
    to_batch([{"images": images, "labels": HostLabels()}])
    copies = [c for n, c in calls if n == "to" and c["args"] and isinstance(c["args"][0], torch.device)]
    assert calls[0] == ("pin_memory", {}) and copies and all(c.get("non_blocking") is True for c in copies)
    calls.clear()
    HostLabels.device = torch.device("cuda", 0)  # already there (moved by the pipeline): a cast, no copy
    to_batch([{"images": images, "labels": HostLabels()}])
    assert calls == [("to", {"args": (torch.int64,)})]


def test_one_pipeline_serves_every_epoch_of_a_trial(jpeg_folder: Folder, monkeypatch) -> None:
    """The loop's stream (trainers.inputs.batches) over 3 epochs: one build, each epoch's files in order;
    a pass asked for out of sequence (a resume) builds again."""
    import trainers.data.folder_dali as folder_dali
    from trainers.inputs import batches

    root, _, _ = jpeg_folder
    built, resets = [], []
    real_build = folder_dali.build_pipeline

    def build(plan):
        pipe = real_build(plan)
        built.append(pipe)
        real_reset = pipe.reset
        monkeypatch.setattr(pipe, "reset", lambda: (resets.append(pipe), real_reset())[1])
        return pipe

    monkeypatch.setattr(folder_dali, "build_pipeline", build)
    tv, dali = bundles(root, bs=4)
    stream = batches(dali.train, dali.steps_per_epoch, start_step=0)
    got = [ids_of(next(stream)[0]) for _ in range(3 * dali.steps_per_epoch)]
    want = [ids_of(x) for epoch in range(3) for x, _ in tv.train.epoch_iter(epoch)]
    assert got == want and len(built) == 1 and dali.train.builds == 1
    assert len(resets) == 2 and set(map(id, resets)) == {id(built[0])}  # reset after epochs 0 and 1
    resumed = [ids_of(x) for x, _ in dali.train.epoch_iter(1, start=2)]
    assert resumed == want[6 + 2:12] and dali.train.builds == 2


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
