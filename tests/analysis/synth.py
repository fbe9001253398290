"""Synthetic studies for the analysis tests: in-memory StudyData, and a writer that puts a StudyData into
an MLflow store through the real MLflow API, with exactly the layout of docs/mlflow_layout.md."""

from __future__ import annotations

import math
import time
import zlib

import numpy as np

from analysis.collect import ACT_STD_PREFIX, Curve, SchemeData, StudyData, TrialData

STAGES = ("stem", "layer1", "layer2", "layer3")


def trial(
    scheme: str,
    lr: float,
    seed: int,
    *,
    init_scale: float | None = None,
    train: float | None = None,
    test: float | None = None,
    diverged: bool = False,
    step: int | None = None,
    cause: str = "nonfinite_loss",
    layer: str = "layer3.0.conv2",
    collapsed: bool = False,
    collapse_cause: str = "dead_relu",
    collapse_step: int | None = 10,
    collapse_layer: str = "layer3",
    stalled: bool = False,
    error: str | None = None,
    curves: dict[str, Curve] | None = None,
    metrics: dict[str, float] | None = None,
    trial_id: str | None = None,
) -> TrialData:
    hp: dict = {"lr": lr, "weight_decay": 1e-4}
    if init_scale is not None:
        hp["init_scale"] = init_scale
    m = dict(metrics or {})
    if collapsed:  # finite to the end, at chance (10 classes): final accuracies are measured
        train = 0.09 if train is None else train
        test = 0.10 if test is None else test
        m |= {"collapsed": 1.0, "collapse_step": float(collapse_step or 0)}
    if stalled:  # finite to the end, did not fit: final accuracies are measured, well above chance
        train = 0.2 if train is None else train
        test = 0.18 if test is None else test
        m |= {"stalled": 1.0}
        m.setdefault("stall_loss_ratio", 0.9)
    if not diverged:
        m |= {"final_train_top1": train, "final_test_top1": test, "final_gap": train - test}
    m.setdefault("step_time_mean_s", 0.03)
    for k, c in (curves or {}).items():
        m.setdefault(k, c.values[-1])
    tid = trial_id or f"{scheme}_lr{lr:g}_is{init_scale if init_scale is not None else '-'}_s{seed}"
    return TrialData(
        run_id="",
        trial_id=tid,
        scheme=scheme,
        status="FAILED" if error else "FINISHED",
        hp=hp,
        seed=seed,
        diverged=diverged,
        divergence_cause=cause if diverged else None,
        divergence_step=step if diverged else None,
        divergence_layer=layer if diverged else None,
        metrics=m,
        curves=dict(curves or {}),
        collapsed=collapsed,
        collapse_cause=collapse_cause if collapsed else None,
        collapse_step=collapse_step if collapsed else None,
        collapse_layer=collapse_layer if collapsed else None,
        stalled=stalled,
        error=error,
    )


def study(schemes: dict[str, list[TrialData]], *, name: str = "S", scheme_metrics=None, params=None,
          scheme_tags=None) -> StudyData:
    scheme_metrics, scheme_tags = scheme_metrics or {}, scheme_tags or {}
    return StudyData(
        name=name,
        run_id="",
        experiment="normstudy",
        tracking_uri="",
        params=params
        or {
            "model.arch": "resnet_cifar",
            "data.kind": "generated",
            "training.batch_size": "64",
            "training.max_steps": "120",
            "data.image_size": "16",
            "data.num_classes": "10",
        },
        schemes=[SchemeData(n, "", {"scheme": n}, dict(scheme_metrics.get(n, {})), ts, dict(scheme_tags.get(n, {})))
                 for n, ts in schemes.items()],
    )


# --------------------------------------------------------------------------------------------------
# A realistic-looking study: curves that decay when stable and blow up before a divergence


def _curves(rng, lr: float, steps: int, diverge_at: int | None, scheme: str, every: int = 10) -> dict[str, Curve]:
    s = np.arange(1, (diverge_at or steps) + 1)
    loss = 2.3 * np.exp(-s / 35) + 0.35 + 0.04 * rng.standard_normal(len(s))
    grad = 1.2 * np.exp(-s / 50) + 0.6 + 0.05 * rng.standard_normal(len(s))
    upd = 0.004 * math.sqrt(lr * 10) * (1 + 0.1 * rng.standard_normal(len(s)))
    if diverge_at:
        t = np.clip(s - (diverge_at - 25), 0, None)
        grad = grad * 1.22**t
        upd = upd * 1.25**t
        loss = loss * 1.09 ** np.clip(s - (diverge_at - 12), 0, None)
        loss[-1] = np.nan
    ema = np.empty_like(loss)
    ema[0] = loss[0]
    for i in range(1, len(loss)):
        ema[i] = 0.9 * ema[i - 1] + 0.1 * loss[i] if np.isfinite(loss[i]) else ema[i - 1]
    out = {
        "loss": loss,
        "loss_ema": ema,
        "spike_ratio": loss / ema,
        "grad_norm": grad,
        "lr": np.full(len(s), lr),
        "step_time_s": np.full(len(s), 0.03),
    }
    curves = {k: Curve(tuple(int(x) for x in s), tuple(float(v) for v in vals)) for k, vals in out.items()}
    det = s[(s % every == 0) | (s == s[-1])]
    idx = det - 1
    sharp = 1.3 / lr * (1 + 0.05 * rng.standard_normal(len(det)))
    if diverge_at:
        sharp = sharp * 1.06 ** np.clip(det - (diverge_at - 30), 0, None)
    detailed = {"update_ratio_max": upd[idx], "sharpness": sharp, "sharpness_lr": sharp * lr / 3.8}
    frac = det / steps
    for k, stage in enumerate(STAGES):
        if scheme == "bn":
            std = 1.0 + 0.05 * np.sin(det / 7 + k)
        else:  # WN-like: the last stage blows up, the first vanishes, once training gets going
            depth = k / (len(STAGES) - 1)
            strength = {"wn": 4.0, "normprop": 1.5, "wn_trelu": 3.0}.get(scheme, 2.0)
            std = np.exp((depth - 0.5) * strength * frac**2) * (1 + 0.03 * np.cos(det / 5))
        detailed[ACT_STD_PREFIX + stage] = std
    for k, vals in detailed.items():
        curves[k] = Curve(tuple(int(x) for x in det), tuple(float(v) for v in vals))
    return curves


def realistic_study(steps: int = 120, seeds=(0, 1)) -> StudyData:
    """bn, wn, normprop and wn_trelu on an lr × init-scale grid; the WN family diverges at smaller lrs, and
    a few of its trials collapse (finite, at chance) just below where it diverges: wn at (lr 0.3, init 2)
    seed 1, wn_trelu at (lr 1, init 0.5) both seeds; BN stalls at lr 3 seed 1 (finite, did not fit, as BN at
    lr 10 on the quick default), and normprop has a third seed at init 1 whose lr-0.1 trial errored. Every
    finished trial has its initial and final train loss (``initial_train_loss``, ``final_train_loss``)."""
    collapses = {("wn", 0.3, 2.0, 1), ("wn_trelu", 1.0, 0.5, 0), ("wn_trelu", 1.0, 0.5, 1)}
    stalls = {("bn", 3.0, None, 1)}
    lrs = (0.03, 0.1, 0.3, 1.0, 3.0)
    limits = {"bn": 3.0, "wn": 1.0, "normprop": 0.3, "wn_trelu": 1.0}  # first lr that diverges (init scale 1)
    base = {"bn": (0.82, 0.05), "wn": (0.80, 0.11), "normprop": (0.77, 0.09), "wn_trelu": (0.81, 0.10)}
    schemes: dict[str, list[TrialData]] = {}
    for scheme in limits:
        scales = (None,) if scheme == "bn" else (0.5, 1.0, 2.0)
        ts = []
        for init in scales:
            for lr in lrs:
                for seed in seeds:
                    rng = np.random.default_rng(zlib.crc32(repr((scheme, lr, init, seed)).encode()))
                    limit = limits[scheme] / (init or 1.0)
                    div = lr >= limit * (0.99 if seed == 0 else 1.5)
                    test = base[scheme][0] - 0.05 * (math.log10(lr) + 1) ** 2 + 0.01 * rng.standard_normal()
                    train = test + base[scheme][1] + 0.005 * rng.standard_normal()
                    step = int(steps * (0.3 + 0.4 * rng.random())) if div else None
                    collapsed = (scheme, lr, init, seed) in collapses
                    stalled = (scheme, lr, init, seed) in stalls
                    if collapsed:
                        train, test = 0.09 + 0.01 * seed, 0.1
                    if stalled:
                        train, test = 0.21, 0.18
                    train = min(train, 1.0)
                    losses = {"initial_train_loss": 2.3 + 0.02 * rng.standard_normal()}
                    if not div:
                        losses["final_train_loss"] = max(0.02, 2.3 * (1 - train) ** 1.5)
                    ts.append(
                        trial(
                            scheme,
                            lr,
                            seed,
                            init_scale=init,
                            train=train,
                            test=test,
                            diverged=div,
                            step=step,
                            cause="nonfinite_loss" if seed == 0 else "loss_spike",
                            layer="layer3.1.conv2",
                            collapsed=collapsed,
                            collapse_step=20 + 10 * seed,
                            collapse_layer="layer2",
                            stalled=stalled,
                            curves=_curves(rng, lr, steps, step, scheme),
                            metrics={
                                "step_time_mean_s": (0.031 if scheme == "bn" else 0.024) * (1 + 0.05 * rng.random()),
                                **losses,
                            },
                        )
                    )
        schemes[scheme] = ts
    # a third seed of normprop (init 1): lr 0.03 trained, lr 0.1 raised — the seed lacks rates of the sweep
    loss = {"initial_train_loss": 2.3, "final_train_loss": 0.5}
    schemes["normprop"] += [trial("normprop", 0.03, 2, init_scale=1.0, train=0.75, test=0.7, metrics=loss),
                            trial("normprop", 0.1, 2, init_scale=1.0, train=0.8, test=0.7,
                                  error="RuntimeError: CUDA out of memory")]
    shares = {
        "bn": {"norm_share": 0.27, "conv_share": 0.55, "profile_step_time_s": 0.031},
        "wn": {"norm_share": 0.06, "conv_share": 0.71, "profile_step_time_s": 0.024},
    }
    return study(schemes, name="demo", scheme_metrics=shares)


# --------------------------------------------------------------------------------------------------
# Writing a StudyData into MLflow


def write_mlflow(client, experiment: str, st: StudyData, *, collapse_tags: bool = True) -> str:
    """Write ``st`` as a study run, scheme runs (with their tags) and trial runs; return the study run's id.
    A collapsed trial always has the loop's metrics (``collapsed``, ``collapse_step``); ``collapse_tags``
    adds its string tags too. An errored trial's run ends FAILED with study/trial.py's note."""
    from mlflow.entities import Metric, Param

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    now = int(time.time() * 1000)
    root = client.create_run(exp_id, run_name=st.name, tags={"normstudy.role": "study", "normstudy.study": st.name})
    sid = root.info.run_id
    client.log_batch(sid, params=[Param(k, str(v)) for k, v in st.params.items()])
    for sch in st.schemes:
        srun = client.create_run(
            exp_id,
            run_name=f"{st.name}/{sch.name}",
            tags={
                "normstudy.role": "scheme",
                "normstudy.study": st.name,
                "normstudy.scheme": sch.name,
                "mlflow.parentRunId": sid,
                **sch.tags,
            },
        )
        client.log_batch(
            srun.info.run_id,
            params=[Param("scheme", sch.name), Param("search.mode", "grid")],
            metrics=[Metric(k, v, now, 0) for k, v in sch.metrics.items()],
        )
        for t in sch.trials:
            tags = {
                "normstudy.role": "trial",
                "normstudy.study": st.name,
                "normstudy.scheme": sch.name,
                "normstudy.trial_id": t.trial_id,
                "seed": str(t.seed),
                "diverged": "1" if t.diverged else "0",
                "mlflow.parentRunId": srun.info.run_id,
            }
            if t.diverged:
                tags |= {
                    "divergence_cause": t.divergence_cause,
                    "divergence_step": str(t.divergence_step),
                    "divergence_layer": t.divergence_layer,
                }
            if t.stalled:
                tags |= {"outcome": "stalled", "stalled": "1"}
            if t.error:  # study/trial.py's note on a run that raised
                tags |= {"mlflow.note.content": f"errored: {t.error}"}
            if t.collapsed and collapse_tags:  # the tags study/trial.py sets from the loop's summary
                tags |= {
                    "outcome": "collapsed",
                    "collapse_cause": t.collapse_cause,
                    "collapse_step": str(t.collapse_step),
                    "collapse_layer": t.collapse_layer,
                }
            trun = client.create_run(exp_id, run_name=f"{st.name}/{sch.name}/{t.trial_id}", tags=tags)
            rid = trun.info.run_id
            params = [Param(f"hp.{k}", str(v)) for k, v in t.hp.items()] + [Param("hp.seed", str(t.seed))]
            params.append(Param("training.lr", str(t.hp["lr"])))
            metrics = [
                Metric(k, v, now + i, s)
                for k, c in t.curves.items()
                for i, (s, v) in enumerate(zip(c.steps, c.values, strict=True))
            ]
            last = max((c.steps[-1] for c in t.curves.values()), default=1)
            metrics += [
                Metric(k, v, now + 10**6, last) for k, v in t.metrics.items() if k not in t.curves and v is not None
            ]
            metrics.append(Metric("diverged", float(t.diverged), now + 10**6, last))
            client.log_batch(rid, params=params)
            for i in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            client.set_terminated(rid, status=t.status)
        client.set_terminated(srun.info.run_id)
    client.set_terminated(sid)
    return sid
