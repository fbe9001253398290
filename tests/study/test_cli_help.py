"""What a newcomer reads first: --version, every subcommand's description and examples, the scheme list
aligned, an unknown --scheme refused before Ray or MLflow start, the runs table's link."""

from __future__ import annotations

import re
import sys

import pytest

from study import cli, cli_help
from study.browse import browse_lines
from study.run_names import trial_run_name
from trainers import norms


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"normstudy {cli_help.version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", cli_help.version())


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_help_has_a_description_and_an_example(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert cli_help.COMMANDS[command][1][:40] in out.replace("\n", " ").replace("  ", " ")
    examples = out.split("examples:\n")[1].splitlines()
    assert examples and all(e.strip().startswith(f"normstudy {command}") for e in examples if e.strip())


def test_schemes_are_listed_in_one_aligned_column(capsys):
    assert cli.main(["schemes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {len(ln) - len(ln.split(maxsplit=1)[1]) for ln in lines}  # where each paper begins
    assert len(starts) == 1 and starts.pop() >= max(map(len, norms.names())) + 2


def test_an_unknown_scheme_is_refused_naming_the_known_ones_before_ray_or_mlflow(capsys, monkeypatch):
    for mod in ("ray", "mlflow", "study.runner", "study.tracking"):  # importing any of them would be slow
        monkeypatch.setitem(sys.modules, mod, None)
    assert cli.main(["train", "--scheme", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"normstudy: --scheme: unknown scheme 'foo'; the registered schemes are: {', '.join(norms.names())}"
    assert cli.main(["train", "--scheme", "gn"]) == 2  # registered, not in the quick default's schemes
    assert "'gn' is not in this study (bn, wn, normprop, wn_trelu); add it with --set" in capsys.readouterr().err


def test_the_cli_prints_the_runs_table_link_and_what_serves_it():
    local = browse_lines("sqlite:////s/mlruns.db", "quick", "7")
    assert "browse with: mlflow ui --backend-store-uri sqlite:////s/mlruns.db --port 5000" in local[0]
    assert local[1].endswith("http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=normstudy"
                             "&workflowType=machine_learning")
    remote = browse_lines("http://mlflow:5000", "quick", "7")
    assert remote[1] == ("Runs table: http://mlflow:5000/#/experiments/7/runs?viewStateShareKey=normstudy"
                         "&workflowType=machine_learning")
    assert "viewStateShareKey=normstudy-schemes&" in remote[2]


def test_a_trial_run_is_named_by_what_it_is():
    assert trial_run_name("wn", {"lr": 0.1, "init_scale": 1.0, "seed": 0}) == "wn lr=0.1 init=1 seed=0"
    # a scale study's variants are told apart by name too
    assert trial_run_name("wn", {"lr": 0.1, "seed": 0, "variant": "d14"}) == "wn@d14 lr=0.1 seed=0"
    assert trial_run_name("bn", {"lr": "0.0316227766", "seed": "2"}) == "bn lr=0.0316228 seed=2"  # tags are str
    assert trial_run_name("bn", {"lr": 3.1622776601683795e-05, "init_scale": None, "seed": 1}) == \
        "bn lr=3.16228e-05 seed=1"
