"""The sharpness probe alone: power iteration on Hessian-vector products of a loss with a known Hessian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.spec import DivergenceSpec
from trainers.divergence import DivergenceMonitor
from trainers.sharpness import hessian_top_eigenvalue


def hessian(eigenvalues: list[float]) -> torch.Tensor:
    """A = Q diag(eigenvalues) Qᵀ with a seeded random rotation Q."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(eigenvalues: list[float], split: int | None = None):
    """The loss 0.5 zᵀAz and z split into two parameters (the HVP spans both blocks)."""
    a = hessian(eigenvalues)
    n = a.shape[0]
    z = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = n // 2 if split is None else split
    x, y = z[:k].clone().requires_grad_(), z[k:].clone().requires_grad_()
    return (lambda: 0.5 * torch.cat([x, y]) @ a @ torch.cat([x, y])), [x, y]


def test_top_eigenvalue_of_a_quadratic():
    loss_fn, params = quadratic([9.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1])
    assert hessian_top_eigenvalue(loss_fn, params, 50) == pytest.approx(9.0, rel=1e-3)
    assert all(p.grad is None for p in params)  # .grad untouched


def test_the_largest_magnitude_is_returned_with_its_sign():
    loss_fn, params = quadratic([-7.0, 3.0, 1.0, 0.5])
    assert hessian_top_eigenvalue(loss_fn, params, 100) == pytest.approx(-7.0, rel=1e-3)


def test_deterministic_and_capped_by_iters():
    loss_fn, params = quadratic([9.0, 8.0, 1.0, 0.5, 0.2, 0.1])  # a close top pair: slow convergence
    one = hessian_top_eigenvalue(loss_fn, params, 1)
    assert one == hessian_top_eigenvalue(loss_fn, params, 1)
    assert 0.1 < one < 9.0 - 1e-3  # one Rayleigh quotient of the seeded start: inside the spectrum, not converged
    assert hessian_top_eigenvalue(loss_fn, params, 300) == pytest.approx(9.0, rel=1e-3)


def test_a_loss_linear_in_the_parameters_has_sharpness_zero():
    w = torch.ones(3, requires_grad=True)
    assert hessian_top_eigenvalue(lambda: (w * torch.tensor([1.0, 2.0, 3.0])).sum(), [w], 5) == 0.0


def test_unused_parameters_are_skipped():
    loss_fn, params = quadratic([5.0, 1.0], split=2)  # y is empty: z = x
    unused = torch.zeros(4, requires_grad=True)
    assert hessian_top_eigenvalue(loss_fn, [*params, unused], 50) == pytest.approx(5.0, rel=1e-3)


def test_the_monitor_probes_its_trainable_parameters_with_spec_iters_by_default():
    eigenvalues = [9.0, 8.0, 1.0, 0.5, 0.2, 0.1]
    loss_fn, params = quadratic(eigenvalues)
    a = hessian(eigenvalues)
    model = nn.Module()
    model.x, model.y = (nn.Parameter(p.detach().clone()) for p in params)
    model.frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
    mon = DivergenceMonitor(model, DivergenceSpec(hessian_iters=1))

    def model_loss() -> torch.Tensor:
        z = torch.cat([model.x, model.y])
        return 0.5 * z @ a @ z + model.frozen.sum()

    assert mon.hessian_top_eigenvalue(model_loss) == hessian_top_eigenvalue(loss_fn, params, 1)
    assert mon.hessian_top_eigenvalue(model_loss, 300) == pytest.approx(9.0, rel=1e-3)
