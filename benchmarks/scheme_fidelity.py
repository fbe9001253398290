"""Do the schemes behave as their papers say, at the depth and width we run them? (docs/design.md §3)

Three measurements, each a part (``--parts``):

* ``normprop_depth``: NormProp's block-output std through ResNet-18/50 at init (64 px Gaussian input,
  batch 8), for the default and with each ResNet correction switched off;
* ``classifier_step``: after the scheme's init on the quick default's data, one SGD step (lr 0.3) on
  one layer alone: ‖Δlogits‖/‖logits‖ for the classifier and the median conv (WN family vs BN);
* ``train``: the quick default's model and data, lr 0.1, 150 steps, per scheme and seed: train/test
  top-1 (or the divergence), through the project's own ``train_loop_per_worker``.

    python benchmarks/scheme_fidelity.py                      # all parts (~2 min on 2 cores)
    python benchmarks/scheme_fidelity.py --parts train --schemes wn,wn_trelu --seeds 0,1,2 --set training.warmup_steps=0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.spec import StudySpec, load  # noqa: E402
from trainers import norms  # noqa: E402
from trainers.data.generated import generate  # noqa: E402
from trainers.loop import train_loop_per_worker  # noqa: E402
from trainers.models import build_model  # noqa: E402
from trainers.session import LocalSession  # noqa: E402
from trainers.step_sensitivity import one_step_logit_moves  # noqa: E402


def block_stds(arch: str, seed: int = 0, **options) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    model = build_model(arch, norms.create("normprop", **options), 1000)
    stds: list[float] = []
    for name in model.stages:
        for block in getattr(model, name):
            block.register_forward_hook(lambda _m, _i, out: stds.append(out.std().item()))
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 64, 64))
    return stds, logits.std().item()


def normprop_depth() -> None:
    variants = {"default": {}, "residual_rescale=false": {"residual_rescale": False},
                "center_weights=false": {"center_weights": False},
                "both off": {"residual_rescale": False, "center_weights": False}}
    for arch in ("resnet18", "resnet50"):
        for label, opts in variants.items():
            stds, logits = block_stds(arch, **opts)
            shown = ", ".join(f"{s:.3g}" for s in stds)
            print(f"normprop {arch:8s} {label:24s} block std [{shown}]  logits std {logits:.3g}")


def _layer_moves(scheme_name: str, spec: StudySpec, x: torch.Tensor, y: torch.Tensor, lr: float = 0.3,
                 **options) -> tuple[float, float]:
    torch.manual_seed(0)
    scheme = norms.create(scheme_name, **options)
    model = build_model(spec.model.arch, scheme, spec.data.num_classes, cifar_width=spec.model.cifar_width,
                        cifar_blocks=spec.model.cifar_blocks)
    scheme.data_dependent_init(model, x[:64])
    moves = one_step_logit_moves(model, x[64:128], y[64:128], lr)
    fc = moves.pop("fc")
    return fc, statistics.median(moves.values())


def classifier_step(spec: StudySpec) -> None:
    d = spec.data
    x, y, *_ = generate(d.num_classes, 256, 64, d.image_size, float(d.noise), d.data_seed)
    cases = [("bn", {}), ("wn", {}), ("wn", {"classifier_data_init": True}), ("wn_trelu", {}),
             ("wn_trelu_affine", {}), ("normprop", {})]
    for name, opts in cases:
        fc, conv = _layer_moves(name, spec, x, y, **opts)
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        print(f"classifier-step {label:36s} classifier alone moves logits {fc:6.2f}x   median conv {conv:.3f}x")


def train(spec: StudySpec, schemes: list[str], seeds: list[int]) -> None:
    for scheme in schemes:
        for seed in seeds:
            config = spec.trainer_config(scheme)
            config = config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})})
            started = time.perf_counter()
            s = train_loop_per_worker({"trial": config, "session": "local"}, session=LocalSession())
            took = time.perf_counter() - started
            if s.get("diverged"):
                result = f"diverged at step {int(s['divergence_step'])}: {s.get('divergence_cause', '?')}"
            else:
                result = f"train {s['final_train_top1']:.3f}  test {s['final_test_top1']:.3f}"
            print(f"train {scheme:16s} lr={spec.training.lr:g} seed={seed} steps={spec.training.max_steps}  "
                  f"{result}  ({took:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="normprop_depth,classifier_step,train")
    p.add_argument("--schemes", default="bn,wn,normprop,wn_trelu")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--set", action="append", default=[], help="spec overrides for the train part")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    spec = load(None, ["training.lr=0.1", "training.max_steps=150", *args.set])
    print(f"# torch {torch.__version__}, 1 thread; quick-default data/model; command: {' '.join(sys.argv)}")
    if "normprop_depth" in parts:
        normprop_depth()
    if "classifier_step" in parts:
        classifier_step(spec)
    if "train" in parts:
        train(spec, args.schemes.split(","), [int(s) for s in args.seeds.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
