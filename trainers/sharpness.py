"""The sharpness probe: the top eigenvalue λ_max of the loss Hessian, and where it stands against the
edge of stability of SGD with momentum.

**Estimate.** :func:`hessian_top_eigenvalue` runs ``iters`` steps of Lanczos (Golub & Van Loan §10.1)
on Hessian-vector products (double backward) from a start vector and returns the top Ritz value, the
largest eigenvalue of the Hessian restricted to the Krylov space span{v, Hv, …, H^(iters−1) v}. That
space holds the power iterate H^(iters−1) v, so for the same number of products the Lanczos value is
never below the power-iteration estimate (a Rayleigh quotient inside the same space), and it is a lower
bound on λ_max (the largest *algebraic* eigenvalue: negative curvature is not sharpness).

**Warm start.** :class:`SharpnessProbe` keeps the vector between probes: the next probe starts from
H y / ‖H y‖, y the last top Ritz vector — one power step on top of it, free because H y = θ y + β_m s_m
q_(m+1) is known from the last Lanczos step (with one product a probe this *is* warm-started power
iteration). The Hessian drifts slowly between probes, so the probes accumulate iterations instead of
starting from scratch each time. The very first probe starts from the gradient direction (it leans
towards the top eigenspace: Gur-Ari et al. 2018), which costs nothing since the probe computes the
gradient anyway. A resumed trial starts cold again (the vector is not checkpointed).

**Cost** of a probe: one gradient with its graph kept (``create_graph``) and exactly ``iters``
Hessian-vector products (fewer only when the Krylov space is exhausted: a Hessian of lower rank than
``iters``). On the quick default's CPU model the gradient costs ≈ 1.6 training steps and each product
≈ 2 (benchmarks/sharpness_overhead.py measures it). Two host syncs a product.

**Edge of stability.** Gradient descent with step η on a quadratic of curvature λ diverges once
ηλ > 2; with heavy-ball momentum β (PyTorch's SGD) once ηλ > 2(1 + β), with Nesterov momentum once
ηλ > 2(1 + β)/(1 + 2β) (:func:`stability_threshold`). Cohen et al. 2021, "Gradient descent on neural
networks typically occurs at the edge of stability", saw full-batch training drive λ_max up to 2/η
(2(1 + β)/η with momentum, their appendix) and hover there. :func:`edge_ratio` = η·λ_max / that threshold:
**1 is the edge**. Coupled weight decay adds its coefficient to every curvature (5e-4 here: negligible)
and a scheme's per-group lr multipliers are not in η (the base rate).

``DivergenceMonitor.hessian_top_eigenvalue`` (trainers/divergence.py) holds one probe per run and runs it
on the trainable parameters with the activation hooks disarmed; the training loop calls it every
``divergence.hessian_every`` steps on that step's batch (BN running statistics frozen) and logs
``sharpness`` (λ_max) and ``sharpness_lr`` (:func:`edge_ratio`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SharpnessProbe", "TopEigen", "edge_ratio", "hessian_top_eigenvalue", "stability_threshold"]


@dataclass
class TopEigen:
    value: float  # the top Ritz value (NaN when the loss or a product was not finite)
    vector: list[torch.Tensor] | None  # the warm start of the next probe (unit norm), None when not finite
    hvps: int  # Hessian-vector products this probe took


def stability_threshold(momentum: float, nesterov: bool = False) -> float:
    """η·λ above which SGD with momentum β diverges on a quadratic of curvature λ: 2(1 + β) for heavy-ball
    momentum (PyTorch's ``SGD``), 2(1 + β)/(1 + 2β) for Nesterov's; 2 for plain gradient descent."""
    return 2 * (1 + momentum) / (1 + 2 * momentum if nesterov else 1)


def edge_ratio(sharpness: float, lr: float, momentum: float, nesterov: bool = False) -> float:
    """η·λ_max / :func:`stability_threshold`: 1 = the edge of stability, above it a quadratic of that
    curvature diverges."""
    return lr * sharpness / stability_threshold(momentum, nesterov)


def hessian_top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int,
                           start: Sequence[torch.Tensor] | None = None) -> TopEigen:
    """Top eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params`` by ``iters`` Lanczos steps on
    Hessian-vector products, from ``start`` (shapes of ``params``; default: the gradient's direction, else a
    seeded random vector). ``loss_fn`` recomputes the loss on a fixed batch and is responsible for model
    mode (BN running stats, dropout); it is called once. ``.grad`` of the parameters is left untouched.
    Value 0.0 when the loss does not depend on the parameters twice."""
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not keep:
        return TopEigen(0.0, None, 0)
    ps, gs = [params[i] for i in keep], [grads[i] for i in keep]
    if start is not None and len(start) == len(params) and all(
            s.shape == p.shape for s, p in zip(start, params, strict=True)):
        v = [start[i].detach().to(ps[k].dtype) for k, i in enumerate(keep)]
    else:
        v = [g.detach().clone() for g in gs]
    if not _normalize_(v):
        gen = torch.Generator().manual_seed(0)
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps]
        _normalize_(v)

    def hvp(q: list[torch.Tensor]) -> list[torch.Tensor]:
        hq = torch.autograd.grad(gs, ps, grad_outputs=q, retain_graph=True, allow_unused=True)
        return [h.detach() if h is not None else torch.zeros_like(p) for h, p in zip(hq, ps, strict=True)]

    basis, alphas, betas = [v], [], []
    w, residual = v, False
    for j in range(max(1, iters)):
        w = hvp(basis[j])
        alpha = _dot(basis[j], w)
        alphas.append(alpha)
        if not math.isfinite(alpha):
            return TopEigen(math.nan, None, j + 1)
        for q in basis:  # full re-orthogonalization: iters is small, and it keeps the Ritz values honest
            torch._foreach_add_(w, q, alpha=-_dot(q, w))
        beta = _norm(w)
        if not math.isfinite(beta) or beta <= 1e-7 * max(abs(a) for a in alphas):
            break  # the Krylov space is exhausted (an invariant subspace: the Ritz values are exact)
        if j + 1 == iters:
            residual = True  # w = β_m q_(m+1)
            break
        betas.append(beta)
        torch._foreach_div_(w, beta)
        basis.append(w)
    theta, s = _top_ritz(alphas, betas)
    # the next start: H y = θ y + β_m s_m q_(m+1), y = Σ s_k q_k (module docstring)
    nxt = [torch.zeros_like(p) for p in ps]
    for coef, q in zip(s, basis, strict=True):
        torch._foreach_add_(nxt, q, alpha=theta * coef)
    if residual:
        torch._foreach_add_(nxt, w, alpha=s[-1])
    start_next = None
    if _normalize_(nxt):
        start_next = [torch.zeros_like(p) for p in params]
        for k, i in enumerate(keep):
            start_next[i] = nxt[k]
    return TopEigen(theta, start_next, len(alphas))


class SharpnessProbe:
    """Warm-started probes (module docstring): each :meth:`__call__` starts where the last one ended."""

    def __init__(self) -> None:
        self.vector: list[torch.Tensor] | None = None
        self.hvps = 0  # products taken over all probes

    def __call__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int) -> float:
        est = hessian_top_eigenvalue(loss_fn, params, iters, start=self.vector)
        self.hvps += est.hvps
        if est.vector is not None:  # a non-finite probe keeps the last good vector
            self.vector = est.vector
        return est.value

    def reset(self) -> None:
        self.vector = None


def _top_ritz(alphas: list[float], betas: list[float]) -> tuple[float, list[float]]:
    """The largest eigenvalue of the Lanczos tridiagonal matrix and its unit eigenvector."""
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)
    return float(evals[-1]), [float(c) for c in evecs[:, -1]]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b, strict=True)))


def _norm(vs: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vs))))


def _normalize_(vs: list[torch.Tensor]) -> bool:
    """Scale the tensors to unit global norm in place; False (untouched) when the norm is 0 or not finite."""
    norm = _norm(vs)
    if norm > 0 and math.isfinite(norm):
        torch._foreach_div_(vs, norm)
        return True
    return False


@contextlib.contextmanager
def frozen_batchnorm(module: nn.Module):
    """Forward passes that must not move BN running statistics (sharpness probes; AlgoPerf's rule)."""
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
