"""Issue 23 §5: what a trial needs against what the machine has (``study/memory.py``,
``study/preflight_resources.py``).

The memory estimate is checked against a real allocation: a fresh process trains one SGD step of the small
CIFAR ResNet at two batch sizes and measures how far the step raises its peak resident memory above the
resident memory before it (Linux's ``VmHWM``, reset through ``/proc/self/clear_refs``); the estimate's
share of that step (activations kept for backward, gradients, momentum) must match it within 30%.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from study import memory
from study import spec as spec_mod
from study.preflight_resources import check_machine, check_memory
from study.spec import SpecError
from tests.reliability.conftest import cli_env

STEP = r'''
import json, re, sys
import torch
from torch import nn
from study import memory
from study import spec as spec_mod
from trainers import norms
from trainers.models import build_model

torch.set_num_threads(1)
batch, size = int(sys.argv[1]), int(sys.argv[2])
spec = spec_mod.load(None, ["model.cifar_blocks=[1, 1, 1]", f"data.image_size={size}", "schemes=[bn]"])
estimate = memory.worker_memory(spec.trainer_config("bn"), batch)
model = build_model("resnet_cifar", norms.create("bn"), 10, cifar_width=16, cifar_blocks=(1, 1, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
nn.functional.cross_entropy(model(x[:1]), y[:1]).backward()  # code and allocator paged in, at batch 1
opt.zero_grad(set_to_none=True)


def status(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)[1]) * 1024


with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from the resident size now
    f.write("5")
before = status("VmRSS")
nn.functional.cross_entropy(model(x), y).backward()
opt.step()
after = status("VmHWM")
weights = sum(p.numel() * 4 for p in model.parameters())
print(json.dumps({"measured": after - before, "estimated": estimate.activations + estimate.params - weights}))
'''


@pytest.mark.integration
@pytest.mark.parametrize("batch", [128, 256])
def test_the_memory_estimate_matches_a_real_training_step(batch, tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP)
    out = subprocess.run([sys.executable, str(script), str(batch), "32"], env=cli_env(), capture_output=True,
                         text=True, timeout=300, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert 0.7 <= got["measured"] / got["estimated"] <= 1.3, got
    assert got["estimated"] > 80 * 2**20 * batch / 128  # the step is large enough to measure (not noise)


def test_the_estimate_grows_with_the_batch_and_the_image_and_counts_a_generated_data_set():
    spec = spec_mod.load(None, ["model.arch=resnet_cifar", "data.image_size=32", "data.train_size=1000",
                                "data.test_size=500"])
    small, large = (memory.worker_memory(spec.trainer_config("bn"), b) for b in (32, 64))
    assert large.activations == pytest.approx(2 * small.activations, rel=1e-3) and large.params == small.params
    assert small.data == 32 * 3 * 32 * 32 * 4 + 2 * 12 * 32 * 32 * 1500  # the batch, both splits while made
    wide = spec_mod.load(None, ["model.arch=resnet_cifar", "data.image_size=64"])
    assert memory.worker_memory(wide.trainer_config("bn"), 32).activations == pytest.approx(4 * small.activations,
                                                                                               rel=0.01)


def test_a_worker_larger_than_the_largest_node_is_refused_in_one_line(monkeypatch):
    spec = spec_mod.load(None, ["model.arch=resnet50", "data.image_size=224", "training.batch_size=256",
                                "data.train_size=512", "data.test_size=64"])
    need = memory.worker_memory(spec.trainer_config("bn"), 256).total
    check_memory(spec, need * 1.01)  # fits
    with pytest.raises(SpecError, match=r"^training.batch_size: one worker of a trial needs about \d+\.\d GiB "
                                        r"\(parameters .*\) for a batch of 256, but the largest node gives its "
                                        r"tasks \d+\.\d GiB; lower training.batch_size"):
        check_memory(spec, need * 0.99)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 64 * 2**30}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])  # a dead node
    tiny = spec_mod.load(None, ["data.kind=folder", "data.path=/srv/x", "data.loader_workers=6",
                                "model.arch=resnet_cifar", "data.image_size=32", "data.eval_resize=32"])
    with pytest.raises(SpecError, match=r"^data.loader_workers: 6 loader processes a worker, but the largest node "
                                        r"has 4 CPUs; use at most 4$"):
        check_machine(tiny)


def test_an_fp32_gpu_worker_larger_than_this_machines_gpu_is_refused(monkeypatch):
    """The GPU branch's logic on a CPU machine: the GPU's memory is stood in for."""
    monkeypatch.setattr("study.preflight_resources._local_gpu_memory", lambda: 2 * memory.GIB)
    gpu = ["scaling.use_gpu=true", "model.arch=resnet18", "data.image_size=224", "training.batch_size=64",
           "data.train_size=512", "data.test_size=64"]
    spec = spec_mod.load(None, gpu)
    need = memory.worker_memory(spec.trainer_config("bn"), 64).device
    assert need > 2 * memory.GIB
    with pytest.raises(SpecError, match=r"^training.batch_size: one GPU worker needs about \d+\.\d GiB of GPU memory "
                                        r"for a batch of 64 \(study.memory\), but this machine's GPU has 2.0 GiB"):
        check_memory(spec, 0)
    check_memory(spec_mod.load(None, gpu + ["training.amp=bf16"]), 0)  # bf16: not estimated, not refused
    check_memory(spec_mod.load(None, gpu + ["training.batch_size=4"]), 0)  # a batch that fits
