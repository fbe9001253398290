"""The GPU options' logic, on CPU: loader choice, bf16 autocast (TReLU's dtype included), channels_last,
torch.compile, use_gpu, cuDNN's autotuner, per-rank CUDA random streams, copies that do not block the host,
and the step profile measured on the trial's device and dtype (kernels counted once).

What runs here is the same code the GPU path runs, with the device swapped for the CPU where that is
possible (autocast, channels_last, DALI's CPU backend) and with a spy where it is not worth the time
(torch.compile's wiring). The last section runs only where CUDA is available.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainers.data as data_mod
import trainers.inputs as inputs
import trainers.loop as loop
import trainers.profiling as profiling
from study import cli
from study.spec import StudySpec, load
from tests.trainers.data.imagefolder import folder_spec, jpeg_folder  # noqa: F401  (session fixture)
from trainers.data import build_data, dali_available, resolve_loader
from trainers.models import build_model
from trainers.norms.wn_trelu import TranslatedReLU
from trainers.session import LocalSession

TINY = ["training.max_steps=4", "training.report_every=1", "training.eval_every=4", "data.train_size=256",
        "data.test_size=64", "data.train_eval_size=64", "training.batch_size=32", "training.lr=0.03"]
CPU = torch.device("cpu")
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _one_thread(one_thread_and_private_tmp):
    """Every test here: 1 torch thread and private checkpoint temp dirs (tests/trainers/conftest.py)."""


def tiny(*overrides: str) -> StudySpec:
    return load(None, [*TINY, *overrides])


def train(spec: StudySpec, scheme: str = "bn", device: torch.device = CPU) -> tuple[dict[str, Any], LocalSession]:
    session = LocalSession(device=device)
    summary = loop.train_loop_per_worker({"trial": spec.trainer_config(scheme), "session": "local"},
                                         session=session)
    return summary, session


def losses(session: LocalSession) -> list[float]:
    """The training loss of every step (report_every=1: one report a step, the last replaced by the summary)."""
    return [r["loss"] for r in session.reports[:-1]]


class ForwardSpy:
    """Wraps ``loop.build_model``: records, for every forward of the model's stem conv and of its classifier,
    the input memory format, the output dtype and whether the model was in training mode."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = loop.build_model

        def build(*a, **k):
            model = real(*a, **k)
            stem, head = model.conv1, model.fc  # every scheme's ResNet names them so (its own classes)

            def conv_hook(mod, inp, out):
                self.calls.append({"where": "conv", "training": model.training, "dtype": out.dtype,
                                   "channels_last": inp[0].is_contiguous(memory_format=torch.channels_last)
                                   and not inp[0].is_contiguous()})

            def head_hook(mod, inp, out):
                self.calls.append({"where": "head", "training": model.training, "dtype": out.dtype})

            stem.register_forward_hook(conv_hook)
            head.register_forward_hook(head_hook)
            return model

        monkeypatch.setattr(loop, "build_model", build)

    def of(self, where: str, training: bool) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["where"] == where and c["training"] == training]


# --------------------------------------------------------------------------------------------------
# loader choice: data.loader auto | torchvision | dali


def test_auto_picks_torchvision_without_cuda(monkeypatch):
    assert resolve_loader("auto", cuda_available=False) == "torchvision"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_loader("auto") == "torchvision"  # the loop's default: asks torch


def test_auto_picks_dali_with_cuda_only_when_dali_imports(monkeypatch):
    monkeypatch.setattr(data_mod, "dali_available", lambda: True)
    assert resolve_loader("auto", cuda_available=True) == "dali"
    monkeypatch.setattr(data_mod, "dali_available", lambda: False)
    assert resolve_loader("auto", cuda_available=True) == "torchvision"  # never a DALI it cannot import


def test_explicit_choices_pass_through_and_dali_without_dali_says_how_to_install(monkeypatch):
    assert resolve_loader("torchvision", cuda_available=True) == "torchvision"
    monkeypatch.setattr(data_mod, "dali_available", lambda: False)
    with pytest.raises(ImportError, match="pip install nvidia-dali-cuda130") as err:
        resolve_loader("dali", cuda_available=False)
    assert "\n" not in str(err.value) and "data.loader: torchvision" in str(err.value)


def test_folder_with_auto_loader_on_a_cpu_device_reads_with_torchvision(jpeg_folder):  # noqa: F811
    bundle = build_data(folder_spec(jpeg_folder[0], "auto"), batch_size=4, device=CPU)
    assert bundle.description.startswith("folder (torchvision)")


@needs_dali
def test_dali_requested_without_cuda_runs_on_dalis_cpu_backend(jpeg_folder):  # noqa: F811
    """No error and no silent switch to torchvision: the same pipeline graph with CPU decoding."""
    bundle = build_data(folder_spec(jpeg_folder[0], "dali"), batch_size=4, device=CPU)
    assert "dali, cpu decoding" in bundle.description
    x, y = next(bundle.train.epoch_iter(0))
    assert x.device.type == "cpu" and x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    assert y.dtype == torch.int64 and y.shape == (4,)  # DALI's int32 [N, 1] labels reshaped


@needs_dali
def test_the_loop_trains_and_evaluates_on_dali_cpu_batches(jpeg_folder, monkeypatch):  # noqa: F811
    root = jpeg_folder[0]
    spec = tiny("data.kind=folder", f"data.path={root}", "data.loader=dali", "data.image_size=16",
                "data.eval_resize=20", "data.loader_workers=1", "data.train_eval_size=8", "training.batch_size=4",
                "training.max_steps=3", "training.eval_every=3", "training.channels_last=true")
    summary, session = train(spec)
    assert summary["diverged"] == 0.0 and summary["steps_done"] == 3.0
    assert all(map(math.isfinite, losses(session)))
    assert 0.0 <= summary["final_test_top1"] <= 1.0  # evaluation went through the DALI eval pipelines


# --------------------------------------------------------------------------------------------------
# training.amp: bf16


def test_bf16_autocast_reaches_training_and_evaluation_forwards(monkeypatch):
    spy = ForwardSpy(monkeypatch)
    summary, session = train(tiny("training.amp=bf16"))
    assert summary["diverged"] == 0.0 and all(map(math.isfinite, losses(session)))
    assert {c["dtype"] for c in spy.of("head", training=True)} == {torch.bfloat16}
    assert {c["dtype"] for c in spy.of("head", training=False)} == {torch.bfloat16}  # evaluate() under amp too
    assert 0.0 <= summary["final_test_top1"] <= 1.0 and math.isfinite(summary["final_train_top1"])
    assert summary["steps_done"] == 4.0


def test_amp_off_is_float32_everywhere(monkeypatch):
    spy = ForwardSpy(monkeypatch)
    train(tiny())
    assert {c["dtype"] for c in spy.calls} == {torch.float32}


def test_bf16_loss_tracks_float32_loss():
    _, fp32 = train(tiny())
    _, bf16 = train(tiny("training.amp=bf16"))
    # bf16 keeps ~3 significant digits; the first step's loss (same weights, same batch) agrees to ~1%
    assert losses(bf16)[0] == pytest.approx(losses(fp32)[0], rel=2e-2)


@pytest.mark.parametrize("slope, learn_slope", [(0.25, True), (0.25, False), (0.0, False)])
def test_trelu_keeps_bf16_activations_bf16_and_its_parameters_float32(slope, learn_slope):
    """A float32 α added to bf16 activations would promote them (and every later layer) to float32."""
    act = TranslatedReLU(4, slope=slope, learn_slope=learn_slope)
    x = torch.randn(2, 4, 3, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = act(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), act(x.float()), rtol=1e-2, atol=1e-2)  # the same function, rounded
    y.float().sum().backward()
    assert act.alpha.dtype == act.alpha.grad.dtype == torch.float32
    assert act.slope_weight is None or act.slope_weight.grad.dtype == torch.float32


def test_wn_trelu_network_stays_bf16_under_autocast():
    """Every activation and block output of the strict WN + TReLU ResNet is bf16 under bf16 autocast."""
    model = build_model("resnet_cifar", "wn_trelu", 10, cifar_width=8, cifar_blocks=[1, 1, 1])
    dtypes: dict[str, torch.dtype] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, TranslatedReLU) or name.startswith("layer") and name.count(".") == 1:
            mod.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 16, 16))
    assert logits.dtype == torch.bfloat16 and len(dtypes) > 6
    assert {n: d for n, d in dtypes.items() if d != torch.bfloat16} == {}


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet50"])
def test_fixup_network_stays_bf16_under_autocast(arch):
    """Fixup's scalar biases and multipliers are fp32 parameters: cast to the activations' dtype, every
    module's output stays bf16 under bf16 autocast (basic and bottleneck blocks), and the gradients of the
    scalars stay fp32."""
    kw = {"cifar_width": 8, "cifar_blocks": [1, 1, 1]} if arch == "resnet_cifar" else {}
    model = build_model(arch, "fixup", 10, **kw)
    dtypes: dict[str, torch.dtype] = {}
    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    size = 16 if arch == "resnet_cifar" else 32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, size, size))
    assert logits.dtype == torch.bfloat16 and len(dtypes) > 10
    assert {n: d for n, d in dtypes.items() if d != torch.bfloat16} == {}
    logits.float().sum().backward()
    scalars = [p for n, p in model.named_parameters() if p.numel() == 1]
    assert scalars and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                           for p in scalars)


# --------------------------------------------------------------------------------------------------
# training.channels_last


@pytest.mark.parametrize("scheme", ["bn", "wn"])
def test_channels_last_runs_in_nhwc_and_gives_the_same_losses(scheme, monkeypatch):
    spy = ForwardSpy(monkeypatch)
    _, nchw = train(tiny("training.max_steps=2", "training.eval_every=2"), scheme)
    n_calls = len(spy.calls)
    assert not any(c["channels_last"] for c in spy.calls if c["where"] == "conv")
    _, nhwc = train(tiny("training.max_steps=2", "training.eval_every=2", "training.channels_last=true"), scheme)
    convs = [c for c in spy.calls[n_calls:] if c["where"] == "conv"]
    assert convs and all(c["channels_last"] for c in convs)  # training and evaluation batches alike
    # same weights, same batches, a different memory layout: the same losses up to float rounding,
    # at the first step and after an update
    assert losses(nhwc) == pytest.approx(losses(nchw), rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# training.compile (unit test of the wiring: a spy stands in for torch.compile)


class CompileSpy:
    def __init__(self) -> None:
        self.compiled: list[nn.Module] = []
        self.forwards = 0

    def __call__(self, model: nn.Module, *args, **kwargs):
        self.compiled.append(model)
        spy = self

        class Compiled(nn.Module):  # what torch.compile returns: a module whose forward runs the model
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, x):
                spy.forwards += 1
                return self.inner(x)

        return Compiled()


@pytest.mark.parametrize("monitor, compiled_steps", [("true", 2), ("false", 4)])
def test_compile_option_wraps_the_training_forward_with_torch_compile(monitor, compiled_steps, monkeypatch):
    spy = CompileSpy()
    monkeypatch.setattr(torch, "compile", spy)
    summary, _ = train(tiny("training.compile=true", "training.report_every=2", f"divergence.monitor={monitor}"))
    assert summary["diverged"] == 0.0 and summary["steps_done"] == 4.0
    (model,) = spy.compiled  # compiled once, the unwrapped model (one worker: no DDP)
    assert isinstance(model, nn.Module) and not isinstance(model, nn.parallel.DistributedDataParallel)
    # steps 1 and 3 run compiled; the detailed steps 2 and 4 run eagerly while the monitor hooks activations
    assert spy.forwards == compiled_steps


def test_compile_off_never_calls_torch_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called"))
    train(tiny("training.max_steps=1", "training.eval_every=1"))


def test_compiled_training_still_gets_the_monitors_activation_statistics(monkeypatch):
    """Compiled code skips forward hooks added after compilation (torch._dynamo.config.skip_nnmodule_hook_guards),
    and the DivergenceMonitor arms its activation hooks on detailed steps only: the loop runs those steps
    eagerly. Real dynamo tracing here (backend='eager': no inductor code generation, seconds not minutes)."""
    import functools

    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    spec = tiny("training.compile=true", "training.max_steps=6", "training.report_every=3", "training.eval_every=6")
    summary, session = train(spec)
    assert summary["diverged"] == 0.0
    detailed = session.reports[0]  # step 3: a detailed step
    assert detailed["step"] == 3
    stats = [k for k in detailed if k.startswith(("act_mean/", "act_std/", "dead_frac/"))]
    assert stats and all(math.isfinite(detailed[k]) for k in stats), sorted(detailed)
    torch._dynamo.reset()


@pytest.mark.integration
def test_compile_really_compiles_on_cpu_and_trains_like_eager():
    """torch.compile (inductor, C++ codegen with gcc) on the small model: minutes on 2 slow cores."""
    spec = ["training.max_steps=6", "training.eval_every=6", "training.report_every=3", "divergence.monitor=false"]
    t0 = time.perf_counter()
    compiled_summary, compiled = train(tiny(*spec, "training.compile=true"))
    eager_summary, eager = train(tiny(*spec))
    assert compiled_summary["diverged"] == 0.0, time.perf_counter() - t0
    assert compiled_summary["final_train_top1"] == pytest.approx(eager_summary["final_train_top1"], abs=0.05)
    assert [r["loss"] for r in compiled.reports[:-1]] == pytest.approx([r["loss"] for r in eager.reports[:-1]],
                                                                      rel=1e-3)


# --------------------------------------------------------------------------------------------------
# cuDNN's autotuner, per-rank CUDA streams, no blocking copy in the step (mocked devices)


def test_prepare_device_turns_on_cudnns_autotuner_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    inputs.prepare_device(CPU)
    assert torch.backends.cudnn.benchmark is False
    inputs.prepare_device(torch.device("cuda", 0))  # a flag, set without touching a device
    assert torch.backends.cudnn.benchmark is True


def test_setup_prepares_the_sessions_device(monkeypatch):
    seen: list[torch.device] = []
    monkeypatch.setattr(loop, "prepare_device", seen.append)
    loop.setup({"trial": tiny().trainer_config("bn"), "session": "local", "max_steps": 0}, LocalSession())
    assert seen == [CPU]


def test_each_rank_seeds_the_cuda_generators_with_its_own_seed_only(monkeypatch):
    """torch.manual_seed reseeds every CUDA generator too; the shared init seed must not, or every rank
    would draw the same CUDA random numbers for the whole run."""
    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    spec = tiny("training.seed=5")
    for rank in (0, 1):
        seeded.clear()
        loop.setup({"trial": spec.trainer_config("bn"), "session": "local", "max_steps": 0},
                   LocalSession(world_rank=rank, world_size=2))
        assert seeded == [5 + rank]


class RecordingTensor:
    """Stands for a CPU batch tensor on its way to a mocked CUDA device: records every ``.to``."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    def to(self, *args, **kwargs):
        self.calls.append({"args": args, **kwargs})
        return self

    def contiguous(self, memory_format=None):
        return self


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_steps_batch_copies_never_make_the_host_wait(channels_last):
    calls: list[dict[str, Any]] = []
    cuda = torch.device("cuda", 0)
    run = type("Run", (), {})()
    run.batches = iter([(RecordingTensor(calls), RecordingTensor(calls))])
    run.device = cuda
    run.training = tiny(f"training.channels_last={channels_last}").training
    loop.TrainingRun.next_batch(run)
    assert len(calls) == 2 and all(c["args"] == (cuda,) and c.get("non_blocking") is True for c in calls)


def test_the_torchvision_loader_pins_batches_bound_for_a_gpu(jpeg_folder):  # noqa: F811
    """Pinned host memory is what makes the step's non_blocking copies asynchronous."""
    to_gpu = build_data(folder_spec(jpeg_folder[0], "torchvision"), batch_size=4, device=torch.device("cuda", 0))
    assert to_gpu.train.pin_memory and to_gpu.test.pin_memory
    on_cpu = build_data(folder_spec(jpeg_folder[0], "torchvision"), batch_size=4, device=CPU)
    assert not on_cpu.train.pin_memory


# --------------------------------------------------------------------------------------------------
# claim 3's step profile: the trial's device, dtype and memory format; each kernel counted once


def event(key: str, device: str, self_device_us: float = 0.0, self_cpu_us: float = 0.0):
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    return SimpleNamespace(key=key, device_type=DeviceType.CUDA if device == "cuda" else DeviceType.CPU,
                           self_device_time_total=self_device_us, self_cpu_time_total=self_cpu_us,
                           is_user_annotation=False)


def test_cuda_shares_count_each_kernel_once():
    """kineto lists each kernel as a device event (cuDNN's names do not say batch_norm) and inside its
    launching op's self device time: the whole is the device events, a category its launching ops."""
    events = [event("aten::cudnn_batch_norm", "cpu", 10, 3), event("bn_fw_tr_1C11_kernel_NCHW", "cuda", 10),
              event("aten::cudnn_convolution", "cpu", 30, 5), event("sm90_xmma_fprop_implicit_gemm", "cuda", 30),
              event("aten::add_", "cpu", 5, 1), event("elementwise_kernel", "cuda", 5),
              event("unlaunched_kernel", "cuda", 5)]  # no op accounts for it: "other"
    shares = profiling.shares_from_events(events, use_cuda=True)
    assert shares == pytest.approx({"norm_share": 10 / 50, "conv_share": 30 / 50, "attributed": 45 / 50})
    cpu = profiling.shares_from_events(events, use_cuda=False)  # host time of the ops
    assert cpu["norm_share"] == pytest.approx(3 / 9) and cpu["attributed"] == 1.0


def test_the_profile_runs_the_trials_dtype_memory_format_and_batch(monkeypatch):
    spy_calls: list[dict[str, Any]] = []
    real = profiling.build_model

    def build(*a, **k):
        model = real(*a, **k)
        model.fc.register_forward_hook(lambda m, i, o: spy_calls.append({"dtype": o.dtype}))
        model.conv1.register_forward_hook(lambda m, i, o: spy_calls.append(
            {"nhwc": i[0].is_contiguous(memory_format=torch.channels_last) and not i[0].is_contiguous(),
             "batch": i[0].shape[0]}))
        return model

    monkeypatch.setattr(profiling, "build_model", build)
    config = tiny("training.amp=bf16", "training.channels_last=true", "training.batch_size=96").trainer_config("bn")
    done = profiling.profile_on_this_worker(config, 96, use_gpu=False)
    assert (done.device, done.dtype, done.batch) == ("cpu", "bfloat16", profiling.CPU_BATCH_CAP)
    assert {c["dtype"] for c in spy_calls if "dtype" in c} == {torch.bfloat16}
    assert {(c["nhwc"], c["batch"]) for c in spy_calls if "nhwc" in c} == {(True, 64)}
    assert 0 < done.metrics["norm_share"] < 1 and done.metrics["profile_repeats"] == 5.0
    plain = profiling.profile_on_this_worker(tiny().trainer_config("wn"), 32, use_gpu=False)
    assert (plain.device, plain.dtype, plain.batch) == ("cpu", "float32", 32)


# --------------------------------------------------------------------------------------------------
# scaling.use_gpu on a machine without GPUs: refused before anything is written


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")


@no_gpu
@pytest.mark.parametrize("command", [["run"], ["train", "--scheme", "bn"]])
def test_use_gpu_without_gpus_is_one_line_exit_2_and_writes_nothing(command, ray_cluster, tmp_path, monkeypatch,
                                                                     capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli.main([*command, "--set", "scaling.use_gpu=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("normstudy: scaling.use_gpu: ") and "the cluster has 0 GPUs" in err
    assert list(cwd.iterdir()) == []  # no mlruns.db, no normstudy_results, no report


@no_gpu
@pytest.mark.integration
def test_normstudy_run_use_gpu_without_gpus_through_the_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "normstudy"
    argv = [str(exe)] if exe.is_file() else [sys.executable, "-m", "study.cli"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would
    done = subprocess.run([*argv, "run", "--set", "scaling.use_gpu=true"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("normstudy: scaling.use_gpu: "), done.stderr
    assert not (cwd / "mlruns.db").exists() and not (cwd / "normstudy_results").exists()
    assert list(cwd.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# on a CUDA GPU: the same options for real


@needs_cuda
def test_cuda_bf16_channels_last_loop_runs():
    dev = torch.device("cuda", torch.cuda.current_device())
    summary, session = train(tiny("training.amp=bf16", "training.channels_last=true"), "bn", dev)
    assert summary["diverged"] == 0.0 and all(map(math.isfinite, losses(session)))


@needs_cuda
@needs_dali
def test_cuda_dali_mixed_decoding_yields_cuda_batches(jpeg_folder):  # noqa: F811
    dev = torch.device("cuda", torch.cuda.current_device())
    bundle = build_data(folder_spec(jpeg_folder[0], "auto"), batch_size=4, device=dev)
    assert "dali, mixed decoding" in bundle.description  # auto → DALI on a GPU
    x, y = next(bundle.train.epoch_iter(0))
    assert x.is_cuda and y.is_cuda and y.dtype == torch.int64


@needs_cuda
@needs_dali
def test_cuda_loop_on_dali_bf16_channels_last(jpeg_folder):  # noqa: F811
    dev = torch.device("cuda", torch.cuda.current_device())
    root = jpeg_folder[0]
    spec = tiny("data.kind=folder", f"data.path={root}", "data.loader=dali", "data.image_size=16",
                "data.eval_resize=20", "data.loader_workers=2", "data.train_eval_size=8", "training.batch_size=4",
                "training.max_steps=3", "training.eval_every=3", "training.amp=bf16", "training.channels_last=true")
    summary, _ = train(spec, "bn", dev)
    assert summary["diverged"] == 0.0 and 0.0 <= summary["final_test_top1"] <= 1.0


@needs_cuda
def test_cuda_per_rank_streams_differ_and_weights_agree():
    dev = torch.device("cuda", torch.cuda.current_device())
    states, weights = [], []
    for rank in (0, 1):
        run = loop.setup({"trial": tiny().trainer_config("bn"), "session": "local", "max_steps": 0},
                         LocalSession(world_rank=rank, world_size=2, device=dev))
        states.append(torch.cuda.get_rng_state(dev))
        weights.append(run.module.conv1.weight.detach().clone())
    assert not torch.equal(states[0], states[1]) and torch.equal(weights[0], weights[1])
    assert torch.backends.cudnn.benchmark is True


@needs_cuda
def test_cuda_steps_between_reports_make_no_host_sync():
    """CUDA's sync debug mode raises on any synchronizing call (.item(), a blocking copy) in the steps."""
    dev = torch.device("cuda", torch.cuda.current_device())
    spec = tiny("training.max_steps=8", "training.report_every=4", "training.eval_every=8")
    run = loop.setup({"trial": spec.trainer_config("bn"), "session": "local"}, LocalSession(device=dev))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):  # steps 1-3: no report, no detailed step
            loop.train_step(run, *run.next_batch())
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_profile_counts_device_time_on_the_gpu():
    config = tiny("training.amp=bf16", "training.channels_last=true").trainer_config("bn")
    done = profiling.profile_on_this_worker(config, 32, use_gpu=True)
    assert done.device.startswith("cuda:0 ") and done.dtype == "bfloat16" and done.batch == 32
    assert 0 < done.metrics["norm_share"] < 1 and 0 < done.metrics["conv_share"] < 1
    assert done.metrics["norm_share"] + done.metrics["conv_share"] <= 1.0
