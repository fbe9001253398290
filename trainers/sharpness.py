"""The sharpness probe: the top eigenvalue of the loss Hessian by power iteration on Hessian-vector
products (double backward). ``DivergenceMonitor.hessian_top_eigenvalue`` runs it on the trainable
parameters with the activation hooks disarmed; the training loop calls it every ``hessian_every`` steps
and logs the value as ``sharpness``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["hessian_top_eigenvalue"]


def hessian_top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int) -> float:
    """Top eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``, by power iteration with
    Hessian-vector products (double backward). ``loss_fn`` recomputes the loss on a fixed batch.

    Power iteration converges to the eigenvalue of largest *magnitude*; the value returned is the
    Rayleigh quotient vᵀHv of the final unit vector (signed). The start vector is seeded, so the
    result is deterministic; iteration stops early once the estimate changes by < 1e-4 relatively.
    Syncs once per iteration. ``.grad`` of the parameters is left untouched. 0.0 when the loss does not
    depend on the parameters twice (no parameter's gradient has a graph, or the Hessian-vector product
    is 0); ``loss_fn`` is responsible for model mode (BN running stats, dropout)."""
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None and g.requires_grad]
    if not pairs:
        return 0.0
    ps, gs = [p for p, _ in pairs], [g for _, g in pairs]
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps]
    _normalize_(v)
    eig = float("nan")
    for _ in range(max(1, iters)):
        hv = torch.autograd.grad(gs, ps, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = [h.detach() if h is not None else torch.zeros_like(p) for h, p in zip(hv, ps, strict=True)]
        new = torch.stack([torch.vdot(a.flatten(), b.flatten()) for a, b in zip(v, hv, strict=True)])
        new_eig = new.sum().item()
        if _normalize_(hv) == 0.0:
            return 0.0
        v = hv
        converged = math.isfinite(eig) and abs(new_eig - eig) <= 1e-4 * abs(new_eig)
        eig = new_eig
        if converged or not math.isfinite(eig):
            break
    return eig


def _normalize_(vs: list[torch.Tensor]) -> float:
    """Scale the list of tensors to unit global norm in place; return the norm before."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vs))).item()
    if norm > 0 and math.isfinite(norm):
        torch._foreach_div_(vs, norm)
    return norm
