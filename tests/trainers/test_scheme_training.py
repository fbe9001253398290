"""The WN family trains where BN trains (Gitman & Ginsburg 2017 trained them at BN-like rates): on the
quick default's model and generated data (2,048 training images), lr 0.1, 150 steps with a 30-step warmup,
every seed ends finite and well above chance (0.1).

Measured (benchmarks/scheme_fidelity.py --set data.train_size=2048 --set training.warmup_steps=30):
wn 0.59 / 0.65, normprop ≈ 0.9, wn_trelu 0.73 / 0.63 train top-1 on seeds 0 / 1 (0.51 / 0.49 with the
text's zero leak instead of the authors' learned one). Before the fixes of docs/design.md §3, WN reached
chance at lr 0.03 and NormProp diverged at lr ≥ 0.3.
"""

from __future__ import annotations

import pytest

from study.spec import load
from trainers.loop import train_loop_per_worker
from trainers.session import LocalSession

pytestmark = pytest.mark.integration  # six real 150-step trainings


@pytest.fixture(autouse=True)
def _one_thread(one_thread_and_private_tmp):
    yield


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scheme", ["wn", "normprop", "wn_trelu"])
def test_wn_family_trains_at_lr_0_1_for_150_steps(scheme, seed):
    # batch 64 at the rate used at 64, as this check was measured (pinned against the quick default's changes)
    spec = load(None, ["training.lr=0.1", "training.max_steps=150", "training.warmup_steps=30",
                       "data.train_size=2048", f"training.seed={seed}", "training.batch_size=64",
                       "training.lr_reference_batch=64", "training.report_every=10"])
    summary = train_loop_per_worker({"trial": spec.trainer_config(scheme), "session": "local"},
                                    session=LocalSession())
    assert summary["diverged"] == 0, summary
    assert summary["final_train_top1"] >= 0.5, summary  # chance is 0.1
