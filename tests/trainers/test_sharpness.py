"""The sharpness probe alone: Lanczos on Hessian-vector products of a loss with a known Hessian, its warm
start, its cost in products, and the edge of stability it is compared with."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from study.spec import DivergenceSpec
from trainers.divergence import DivergenceMonitor
from trainers.sharpness import SharpnessProbe, edge_ratio, hessian_top_eigenvalue, stability_threshold

TOP = [9.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05]  # a close top pair: one product is not enough


def hessian(eigenvalues: list[float]) -> torch.Tensor:
    """A = Q diag(eigenvalues) Qᵀ with a seeded random rotation Q."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(eigenvalues: list[float], split: int | None = None):
    """The loss 0.5 zᵀAz and z split into two parameters (the products span both blocks)."""
    a = hessian(eigenvalues)
    n = a.shape[0]
    z = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = n // 2 if split is None else split
    x, y = z[:k].clone().requires_grad_(), z[k:].clone().requires_grad_()
    return (lambda: 0.5 * torch.cat([x, y]) @ a @ torch.cat([x, y])), [x, y]


def test_top_eigenvalue_of_a_quadratic():
    loss_fn, params = quadratic(TOP)
    assert hessian_top_eigenvalue(loss_fn, params, 10).value == pytest.approx(9.0, rel=1e-9)  # the whole space
    est = hessian_top_eigenvalue(loss_fn, params, 5)
    assert est.value == pytest.approx(9.0, rel=1e-2) and est.value <= 9.0 + 1e-9  # a lower bound
    assert all(p.grad is None for p in params)  # .grad untouched


def test_lanczos_is_never_below_power_iteration_with_the_same_products():
    loss_fn, params = quadratic(TOP)
    a = hessian(TOP)
    z = torch.cat([p.detach() for p in params])
    v = a @ z / torch.linalg.vector_norm(a @ z)  # the gradient's direction: the probe's cold start
    for m in (2, 3, 4):
        w = v.clone()
        for _ in range(m - 1):
            w = a @ w / torch.linalg.vector_norm(a @ w)
        power = float(w @ a @ w)  # m products: m − 1 steps and the Rayleigh quotient
        assert hessian_top_eigenvalue(loss_fn, params, m).value >= power - 1e-12


def test_the_largest_eigenvalue_not_the_largest_magnitude():
    loss_fn, params = quadratic([-7.0, 3.0, 1.0, 0.5])
    assert hessian_top_eigenvalue(loss_fn, params, 4).value == pytest.approx(3.0, rel=1e-9)


def test_a_probe_costs_one_gradient_and_iters_products(monkeypatch):
    loss_fn, params = quadratic(TOP)
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(k.get("create_graph")) or grad(*a, **k))
    for iters in (1, 2, 3, 5):
        calls.clear()
        assert hessian_top_eigenvalue(loss_fn, params, iters).hvps == iters
        assert calls == [True] + [None] * iters  # one gradient with its graph, then `iters` products
    calls.clear()
    probe = SharpnessProbe()
    for _ in range(4):
        probe(loss_fn, params, 2)
    assert probe.hvps == 8 and len(calls) == 4 * 3
    # fewer only when the Krylov space is exhausted: a rank-2 Hessian
    low_fn, low_params = quadratic([5.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    est = hessian_top_eigenvalue(low_fn, low_params, 5)
    assert est.hvps <= 3 and est.value == pytest.approx(5.0, rel=1e-9)


def test_the_warm_start_carries_the_iterations_over_from_probe_to_probe():
    loss_fn, params = quadratic(TOP)
    cold = hessian_top_eigenvalue(loss_fn, params, 1).value
    assert cold == hessian_top_eigenvalue(loss_fn, params, 1).value < 8.9  # deterministic, not converged
    probe = SharpnessProbe()
    values = [probe(loss_fn, params, 1) for _ in range(60)]
    assert values[0] == cold and values[-1] == pytest.approx(9.0, rel=1e-3)
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:], strict=False))  # power iteration: monotone here
    # with one product a probe, the next start is the power step H v / ‖H v‖
    a = hessian(TOP)
    z = torch.cat([p.detach() for p in params])
    v = a @ z / torch.linalg.vector_norm(a @ z)
    one = SharpnessProbe()
    one(loss_fn, params, 1)
    assert torch.allclose(torch.cat(one.vector), a @ v / torch.linalg.vector_norm(a @ v))
    one.reset()
    assert one(loss_fn, params, 1) == cold


def test_a_loss_linear_in_the_parameters_has_sharpness_zero():
    w = torch.ones(3, requires_grad=True)
    est = hessian_top_eigenvalue(lambda: (w * torch.tensor([1.0, 2.0, 3.0])).sum(), [w], 5)
    assert (est.value, est.hvps) == (0.0, 0)


def test_unused_parameters_are_skipped_and_keep_their_shape_in_the_start():
    loss_fn, params = quadratic([5.0, 1.0], split=2)  # y is empty: z = x
    unused = torch.zeros(4, requires_grad=True)
    probe = SharpnessProbe()
    assert probe(loss_fn, [*params, unused], 5) == pytest.approx(5.0, rel=1e-9)
    assert [v.shape for v in probe.vector] == [p.shape for p in (*params, unused)]
    assert probe(loss_fn, [*params, unused], 1) == pytest.approx(5.0, rel=1e-9)  # warm: right at once


def test_a_non_finite_probe_keeps_the_last_good_vector():
    loss_fn, params = quadratic(TOP)
    probe = SharpnessProbe()
    probe(loss_fn, params, 3)
    kept = [v.clone() for v in probe.vector]
    assert math.isnan(probe(lambda: loss_fn() * float("nan"), params, 3))
    assert all(torch.equal(a, b) for a, b in zip(kept, probe.vector, strict=True))


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_stability_threshold_is_where_sgd_with_momentum_diverges_on_a_quadratic(nesterov):
    """PyTorch's SGD on ½λw²: bounded just below lr·λ = stability_threshold, growing just above it."""
    beta, lam = 0.9, 4.0
    edge_lr = stability_threshold(beta, nesterov) / lam
    for factor, grows in ((0.98, False), (1.02, True)):
        w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=factor * edge_lr, momentum=beta, nesterov=nesterov)
        for _ in range(300):
            opt.zero_grad()
            (0.5 * lam * w * w).sum().backward()
            opt.step()
        assert (abs(w.item()) > 1.0) == grows
        assert (edge_ratio(lam, factor * edge_lr, beta, nesterov) > 1) == grows
    assert stability_threshold(0.0) == 2.0 and stability_threshold(0.9) == pytest.approx(3.8)
    assert stability_threshold(0.9, nesterov=True) == pytest.approx(3.8 / 2.8)


def test_the_monitor_warm_starts_its_probe_with_spec_iters_by_default():
    loss_fn, params = quadratic(TOP)
    a = hessian(TOP)
    model = nn.Module()
    model.x, model.y = (nn.Parameter(p.detach().clone()) for p in params)
    model.frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
    mon = DivergenceMonitor(model, DivergenceSpec(hessian_iters=1))

    def model_loss() -> torch.Tensor:
        z = torch.cat([model.x, model.y])
        return 0.5 * z @ a @ z + model.frozen.sum()

    probe = SharpnessProbe()
    expected = [probe(loss_fn, params, 1) for _ in range(3)]
    assert [mon.hessian_top_eigenvalue(model_loss) for _ in range(3)] == pytest.approx(expected, rel=1e-12)
    assert mon.sharpness.hvps == 3
    mon.load_state_dict(mon.state_dict())  # a resume starts cold: the vector is not checkpointed
    assert mon.hessian_top_eigenvalue(model_loss) == pytest.approx(expected[0], rel=1e-12)


def test_probes_in_the_loop_change_no_step_of_training(monkeypatch):
    """Probes every 5 steps (BN running statistics frozen, .grad untouched, their own generator): the same
    final weights' evaluation as a run without them, and each probe warm-started from the last."""
    from study.spec import load
    from trainers.loop import train_loop_per_worker
    from trainers.session import LocalSession

    calls: list[bool] = []
    original = DivergenceMonitor.hessian_top_eigenvalue

    def counted(self, loss_fn, iters=None):
        calls.append(self.sharpness.vector is not None)  # warm from the second probe on
        return original(self, loss_fn, iters)

    monkeypatch.setattr(DivergenceMonitor, "hessian_top_eigenvalue", counted)
    tiny = ["training.max_steps=20", "training.eval_every=20", "data.train_size=256", "data.test_size=128",
            "data.train_eval_size=128", "training.batch_size=32", "training.report_every=10",
            "training.torch_threads=1"]  # one thread: several would fight over a busy machine's cores
    finals, threads = [], torch.get_num_threads()
    try:
        for every in (5, 0):
            spec = load(None, [*tiny, f"divergence.hessian_every={every}", "divergence.hessian_iters=2"])
            summary = train_loop_per_worker({"trial": spec.trainer_config("bn"), "session": "local"},
                                            session=LocalSession())
            finals.append({k: summary[k] for k in ("final_train_loss", "final_train_top1", "final_test_top1")})
    finally:
        torch.set_num_threads(threads)  # the loop set it for this process
    assert calls == [False, True, True, True]
    assert finals[0] == finals[1]
