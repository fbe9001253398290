"""The device side of the divergence monitor: per-step statistics kept as device tensors, and the one
device→host copy per report interval.

:class:`StepRecorder` is driven around every optimizer step (``DivergenceMonitor`` forwards its calls)::

    rec.start_step(step, detailed)   # before forward: snapshot weights, arm activation hooks (detailed)
    loss.backward()
    rec.record(loss)                 # after backward, before clipping: loss and per-parameter grad norms
    optimizer.step()
    rec.end_step()                   # after the step: ‖Δw‖, ‖w‖, activation stats (detailed); disarm
    ...
    host = rec.flush()               # once per report interval: the ONE host-device sync

Every per-step quantity stays a device tensor in a buffer until :meth:`StepRecorder.flush`, which
concatenates the buffers, copies them to the CPU in one transfer and hands back plain Python floats
(:class:`HostInterval`); the rules then run on those, step by step in order. ``record``/``end_step``/the
hooks never call ``.item()``, ``bool(tensor)`` or ``.cpu()``.

Per step: the loss and each trainable parameter's gradient norm. Detailed steps, in addition: each
parameter's ‖w‖ before the update (the weights the step was applied to) and ‖Δw‖ = ‖w_after − w_before‖,
and the activation statistics. Until the rules have a finite weight reference, ``start_step`` also takes
‖w‖ of every parameter (a device tensor, copied with the next flush's transfer).

Activation statistics (detailed steps, models with a ``.stages`` attribute such as ``trainers.resnet``):
``act_mean/<stage>`` and ``act_std/<stage>`` over every element of the stage output (``stem`` = output of
the stem's ``act1``); ``dead_frac/<stage>`` = fraction of channels whose activation output is constant
over batch and positions (max == min; a dead ReLU is constant 0, a dead TReLU constant α), averaged over
the activation modules of the stage (submodules named ``act<k>``). Several forwards in one step (gradient
accumulation) are pooled. The std is √(E[y²] − E[y]²) from a mean and a root-mean-square: two fast
passes where ``torch.std_mean`` costs ~100× more on CPU.

Cost (resnet_cifar, 16 px, batch 64, one CPU thread, detailed every 10th step): ≈ 2 % of the step. Per
step: one ``_foreach_norm`` over the gradients and one ``stack`` (until a finite weight reference exists,
also one over the weights per report interval). Detailed steps: a weight snapshot (one extra copy of the
parameters, kept allocated between detailed steps), three ``_foreach_norm`` and a few reductions per
hooked activation. The hooks are registered in ``start_step`` and removed in
``end_step``; compiled code skips hooks added after compilation, so with ``training.compile`` the loop
runs detailed steps on the uncompiled model.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["DetailStats", "HostInterval", "Stage", "StepRecorder", "find_stages"]

_ACT_NAME = re.compile(r"act\d*")
_F32 = torch.float32


@dataclass
class Stage:
    name: str
    out: nn.Module  # the module whose output gives act_mean/act_std
    acts: list[nn.Module]  # activation modules whose outputs give dead_frac


def find_stages(model: nn.Module) -> list[Stage]:
    """The stem (``model.act1``) and the modules named in ``model.stages``; [] for other models."""
    names = getattr(model, "stages", None)
    if not names:
        return []
    stages = []
    stem = getattr(model, "act1", None)
    if isinstance(stem, nn.Module):
        stages.append(Stage("stem", stem, [stem]))
    for name in names:
        mod = getattr(model, name)
        acts = [m for n, m in mod.named_modules() if n and _ACT_NAME.fullmatch(n.rsplit(".", 1)[-1])]
        stages.append(Stage(name, mod, acts))
    return stages


@dataclass
class DetailStats:
    """A detailed step's statistics on the host."""
    wnorm: list[float]  # ‖w‖ per parameter before the update
    dnorm: list[float]  # ‖Δw‖ per parameter
    acts: list[tuple[float, float, float]]  # (mean, rms, dead fraction) per stage; NaN where not seen


@dataclass
class HostInterval:
    """The recorded steps of one report interval, copied to the host in one transfer."""
    steps: list[int]  # in the order recorded
    losses: list[float]  # one per entry of steps
    grad_norms: list[list[float]]  # per-parameter gradient norms, one list per step ([] when disabled)
    detail: dict[int, DetailStats]  # detailed step -> its statistics
    start_wnorm: list[float] | None  # ‖w‖ per parameter at the first step, when it was taken


class StepRecorder:
    """Per-step device statistics of a model's trainable parameters (module docstring)."""

    def __init__(self, model: nn.Module, *, enabled: bool = True) -> None:
        """``model``: the UNWRAPPED module (not DDP). When not ``enabled`` only the loss is recorded (no
        grad norms, no hooks, no snapshots)."""
        self.enabled = bool(enabled)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = [p for _, p in named]
        self._all_f32 = all(p.dtype == _F32 for p in self.params)
        self.stages = find_stages(model)

        # per-step buffers (device tensors)
        self._steps: list[int] = []
        self._vecs: list[torch.Tensor] = []  # [loss, grad norms...] per recorded step
        self._detail: dict[int, torch.Tensor] = {}  # step -> [‖w‖..., ‖Δw‖..., act stats...]
        self.wnorm_start: torch.Tensor | None = None  # ‖w‖ at the first step, until the next flush

        # the step in progress
        self._step = 0
        self._detailed = False
        self._recorded = False
        self._snap: list[torch.Tensor] | None = None
        self._handles: list[Any] = []
        self.act_stats: dict[tuple[int, str], list[torch.Tensor]] = {}  # (stage, mean|rms|dead) -> values
        self._last_vec: torch.Tensor | None = None  # [loss, grad norms...] of the last record

    @property
    def stage_names(self) -> list[str]:
        return [st.name for st in self.stages]

    # ------------------------------------------------------------------ per step (no host-device sync)
    def start_step(self, step: int, detailed: bool, *, weight_norms: bool = False) -> None:
        """Before forward. On detailed steps: snapshot the weights (for Δw) and arm the activation hooks.
        ``weight_norms``: take ‖w‖ now unless a pending one awaits the next flush."""
        self._disarm()
        self._step = int(step)
        self._recorded = False
        self._detailed = bool(detailed) and self.enabled
        self.act_stats = {}
        if self.enabled and weight_norms and self.wnorm_start is None and self.params:
            # ‖w‖ before this step's forward: a device tensor, copied with the next flush's transfer
            with torch.no_grad():
                self.wnorm_start = torch.stack(torch._foreach_norm(self.params, 2, dtype=_F32))
        if not self._detailed:
            return
        with torch.no_grad():
            if self._snap is None or len(self._snap) != len(self.params):
                self._snap = [torch.empty_like(p) for p in self.params]
            torch._foreach_copy_(self._snap, self.params)
        self._arm()

    def record(self, loss: torch.Tensor) -> None:
        """After backward (DDP-averaged grads), before clipping and ``optimizer.step``. No sync."""
        loss = loss.detach().reshape(()).to(_F32)
        if not self.enabled:
            vec = loss.reshape(1)
        else:
            grads = [p.grad for p in self.params]
            if all(g is not None for g in grads):
                norms = torch._foreach_norm(grads, 2, dtype=None if self._all_f32 else _F32)
            else:
                present = [g for g in grads if g is not None]
                it = iter(torch._foreach_norm(present, 2, dtype=_F32) if present else ())
                zero = loss.new_zeros(())
                norms = [next(it) if g is not None else zero for g in grads]
            vec = torch.stack([loss, *norms])
            self._last_vec = vec
        self._steps.append(self._step)
        self._vecs.append(vec)
        self._recorded = True

    def end_step(self) -> None:
        """After ``optimizer.step``. On detailed steps: ‖Δw‖, ‖w‖ and activation statistics. No sync."""
        try:
            if self._detailed and self._recorded and self._snap is not None:
                with torch.no_grad():
                    wnorm = torch._foreach_norm(self._snap, 2, dtype=_F32)
                    torch._foreach_sub_(self._snap, self.params)  # the snapshot now holds -Δw
                    dnorm = torch._foreach_norm(self._snap, 2, dtype=_F32)
                    acts = self._act_vector(self._vecs[-1])
                    self._detail[self._step] = torch.stack([*wnorm, *dnorm, *acts])
        finally:
            self._disarm()
            self._detailed = False
            self.act_stats = {}

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The global gradient norm of the last ``record`` as a device tensor (no sync); None when disabled
        or nothing was recorded yet."""
        if self._last_vec is None:
            return None
        return torch.linalg.vector_norm(self._last_vec[1:])

    # ------------------------------------------------------------------ report (the one sync)
    def flush(self) -> HostInterval | None:
        """Copy the buffers to the CPU in one transfer and clear them; None when no step was recorded."""
        steps, vecs, detail = self._steps, self._vecs, self._detail
        self._steps, self._vecs, self._detail = [], [], {}
        start, self.wnorm_start = self.wnorm_start, None
        if not steps:
            return None
        detail_steps = [s for s in steps if s in detail]
        parts = [torch.stack(vecs).reshape(-1)]
        parts += [detail[s].reshape(-1) for s in detail_steps]
        if start is not None:
            parts.append(start)
        dev = parts[0].device
        flat = torch.cat([p.to(dev, _F32) for p in parts]).cpu()  # the ONE host-device sync
        # the rest is plain Python on small lists (torch ops on 30-element CPU tensors cost more)
        return self._unpack(flat.tolist(), steps, vecs[0].numel(), detail_steps, start is not None)

    def _unpack(self, vals: list[float], steps: list[int], width: int, detail_steps: list[int],
                has_start: bool) -> HostInterval:
        n = len(self.params)
        rows = [vals[i * width: (i + 1) * width] for i in range(len(steps))]
        off = len(steps) * width
        d_width = 2 * n + 3 * len(self.stages)
        detail = {}
        for s in detail_steps:
            d = vals[off: off + d_width]
            off += d_width
            acts = [tuple(d[2 * n + 3 * k: 2 * n + 3 * k + 3]) for k in range(len(self.stages))]
            detail[s] = DetailStats(d[:n], d[n: 2 * n], acts)
        start_wnorm = vals[off: off + n] if has_start else None
        return HostInterval(steps, [r[0] for r in rows], [r[1:] for r in rows], detail, start_wnorm)

    def discard_pending(self) -> None:
        """Drop the recorded, not yet flushed steps and the pending first-step weight norms."""
        self._steps, self._vecs, self._detail = [], [], {}
        self.wnorm_start = None

    # ------------------------------------------------------------------ activation hooks
    @contextlib.contextmanager
    def hooks_paused(self) -> Iterator[None]:
        """Disarm the activation hooks meanwhile (e.g. extra forwards of a probe); re-arm if they were."""
        armed = bool(self._handles)
        self._disarm()
        try:
            yield
        finally:
            if armed:
                self._arm()

    def _arm(self) -> None:
        for k, st in enumerate(self.stages):
            self._handles.append(st.out.register_forward_hook(self._moments_hook(k)))
            for a in st.acts:
                self._handles.append(a.register_forward_hook(self._dead_hook(k)))

    def _disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _moments_hook(self, k: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                with torch.no_grad():
                    # mean and root-mean-square (two fast passes); std = √(rms² − mean²) is computed at
                    # flush. std_mean's Welford pass costs ~100× more on CPU.
                    y = out.detach()
                    mean = y.mean(dtype=_F32)
                    rms = torch.linalg.vector_norm(y, dtype=_F32).mul_(1.0 / math.sqrt(max(y.numel(), 1)))
                self.act_stats.setdefault((k, "mean"), []).append(mean)
                self.act_stats.setdefault((k, "rms"), []).append(rms)

        return hook

    def _dead_hook(self, k: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                with torch.no_grad():
                    # reduce the batch dim first (contiguous, fast on CPU), then the positions
                    y = out.detach()
                    hi, lo = y.amax(0), y.amin(0)  # (torch.aminmax is ~10× slower here on CPU)
                    if hi.dim() > 1:
                        hi, lo = hi.reshape(hi.shape[0], -1).amax(1), lo.reshape(lo.shape[0], -1).amin(1)
                    dead = (hi == lo).mean(dtype=_F32)
                self.act_stats.setdefault((k, "dead"), []).append(dead)

        return hook

    def _act_vector(self, like: torch.Tensor) -> list[torch.Tensor]:
        """[mean, rms, dead] per stage, pooled over the forwards of this step; NaN where not seen."""
        out = []
        nan = None
        for k in range(len(self.stages)):
            for key in ("mean", "rms", "dead"):
                vals = self.act_stats.get((k, key))
                if not vals:
                    if nan is None:
                        nan = torch.full((), float("nan"), dtype=_F32, device=like.device)
                    out.append(nan)
                elif len(vals) == 1:
                    out.append(vals[0])
                elif key == "rms":  # pooled second moment
                    out.append(torch.stack(vals).square().mean().sqrt())
                else:
                    out.append(torch.stack(vals).mean())
        return out
