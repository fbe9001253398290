"""The one TorchTrainer builder: placement, resources and failures come from the spec's scaling section,
for study trials and ``normstudy train`` alike (no Ray started: building a trainer starts nothing)."""

from __future__ import annotations

from study import spec as spec_mod
from study.torch_trainer import build_torch_trainer, uses_torch_trainer
from study.trial import end_tags, last_line


def test_the_builder_takes_placement_resources_and_failures_from_the_spec(tmp_path):
    scaling = spec_mod.load(None, ["scaling.num_workers=3", "scaling.placement_strategy=STRICT_SPREAD",
                                   "scaling.resources_per_worker={ddp_node: 1}", "scaling.cpus_per_worker=2",
                                   "scaling.max_failures=4"]).scaling
    trainer = build_torch_trainer({"trial": None}, scaling, name="trial-x", storage_path=str(tmp_path))
    sc = trainer.scaling_config
    assert sc.num_workers == 3 and sc.placement_strategy == "STRICT_SPREAD"
    assert sc.resources_per_worker == {"CPU": 2.0, "ddp_node": 1.0}
    assert trainer.run_config.name == "trial-x" and trainer.run_config.failure_config.max_failures == 4
    assert trainer.train_loop_config["session"] == "train"


def test_which_trials_run_a_torch_trainer():
    base = spec_mod.load(None).scaling
    assert not uses_torch_trainer(base)  # one CPU worker: in the trial process
    assert uses_torch_trainer(base.model_copy(update={"num_workers": 2}))
    assert uses_torch_trainer(base.model_copy(update={"use_gpu": True}))
    assert uses_torch_trainer(base.model_copy(update={"torch_trainer": "always"}))


def test_end_tags_carry_every_summary_key_and_the_one_outcome():
    """Study trials and `normstudy train` tag their runs with these (train once tagged 4 of the 8 keys)."""
    collapsed = {"diverged": 0.0, "collapsed": 1.0, "outcome": "collapsed", "collapse_cause": "dead_relu",
                 "collapse_step": 300.0, "collapse_layer": "layer2", "final_train_top1": 0.1, "final_test_top1": 0.1}
    tags = end_tags(collapsed)
    assert tags["outcome"] == "collapsed" and tags["diverged"] == "0" and tags["collapsed"] == "1"
    assert tags["collapse_cause"] == "dead_relu" and tags["collapse_step"] == "300"
    assert tags["collapse_layer"] == "layer2"
    diverged = {"diverged": 1.0, "divergence_step": 37.0, "divergence_cause": "loss_spike",
                "divergence_layer": "layer3.0.conv2.v", "collapsed": 0.0}
    tags = end_tags(diverged)
    assert tags["outcome"] == "diverged" and tags["diverged"] == "1" and tags["divergence_step"] == "37"
    assert tags["divergence_layer"] == "layer3.0.conv2.v" and tags["mlflow.note.content"].startswith("diverged")


def test_end_tags_of_a_stalled_trial_name_its_kind_and_ratio():
    stalled = {"diverged": 0.0, "collapsed": 0.0, "stalled": 1.0, "stall_loss_ratio": 0.93,
               "final_train_top1": 0.2, "final_test_top1": 0.18}
    tags = end_tags(stalled)
    assert tags["outcome"] == "stalled" and tags["stalled"] == "1" and tags["diverged"] == "0"
    assert tags["stall_loss_ratio"] == "0.93"


def test_an_errored_trials_note_is_its_errors_last_line():
    wrapped = RuntimeError("Traceback (most recent call last):\n  File 'x.py', line 1\nMemoryError: out of memory")
    assert last_line(wrapped) == "MemoryError: out of memory"  # a worker's error arrives wrapped
    assert last_line(ValueError("bad lr")) == "ValueError: bad lr"
    assert last_line(KeyError()) == "KeyError"
