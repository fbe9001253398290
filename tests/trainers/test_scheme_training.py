"""The WN family trains where BN trains (Gitman & Ginsburg 2017 trained them at BN-like rates): on the
quick default's data and model, lr 0.1, 150 steps, every seed ends well above chance and finite."""

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
    spec = load(None, ["training.lr=0.1", "training.max_steps=150", "training.warmup_steps=30",
                       f"training.seed={seed}", "search.mode=grid"])
    summary = train_loop_per_worker({"spec": spec.to_dict(), "scheme": scheme, "session": "local"},
                                    session=LocalSession())
    assert summary["diverged"] == 0, summary
    assert summary["final_train_top1"] >= 0.5, summary  # chance is 0.1
