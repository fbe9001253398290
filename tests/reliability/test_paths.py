"""Issue 18 §3: every path and name a spec gives is checked before anything is written — for what the
filesystem and MLflow will do with it: creatable, writable, not too long, not a system folder.

Each case goes through the real ``normstudy run`` (``study.cli.main``, in-process, cwd an empty folder):
exit 2, one stderr line naming the field and the fix, nothing written (no MLflow store, no results, no
report, no lock). These checks need no Ray: they run before the driver takes its lock. The faults are
real: a 300-byte folder name, a path past PATH_MAX, an immutable folder (``chattr +i``: root ignores
permission bits), ``/``, ``/etc``, ``/proc``, the home folder, a report folder holding other files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from study import preflight
from study import spec as spec_mod
from study.cli import main
from study.spec import SpecError
from tests.reliability.conftest import written

HOME = str(Path.home())

# (id, --set overrides (may use {tmp}), what the stderr line must start with)
CASES = [
    ("study-name-too-long", [f"tracking.study_name={'s' * 129}"], "tracking.study_name: 129 characters"),
    ("study-name-300", [f"tracking.study_name={'s' * 300}"], "tracking.study_name: 300 characters"),
    ("study-name-slash", ["tracking.study_name=a/b"], "tracking.study_name: 'a/b' is not a usable name"),
    ("study-name-dotdot", ["tracking.study_name=.."], "tracking.study_name: '..' is not a usable name"),
    ("experiment-too-long", [f"tracking.experiment={'e' * 501}"], "tracking.experiment: 501 characters"),
    ("experiment-tab", ['tracking.experiment="a\\tb"'], "tracking.experiment: 'a\\tb' is not a usable"),
    ("experiment-blank", ["tracking.experiment='  '"], "tracking.experiment: '  ' is not a usable"),
    ("storage-root", ["tracking.storage_path=/"], "tracking.storage_path: '/' is a system folder"),
    ("storage-etc", ["tracking.storage_path=/etc"], "tracking.storage_path: '/etc' is a system folder"),
    ("storage-usr", ["tracking.storage_path=/usr/"], "tracking.storage_path: '/usr' is a system folder"),
    ("storage-in-proc", ["tracking.storage_path=/proc/normstudy"], "tracking.storage_path: '/proc/normstudy' is a "
                                                                    "system folder"),
    ("storage-in-sys", ["tracking.storage_path=/sys/kernel/ns"], "tracking.storage_path: '/sys/kernel/ns' is a "
                                                                 "system folder"),
    ("storage-home", [f"tracking.storage_path={HOME}"], f"tracking.storage_path: '{HOME}' is your home folder"),
    ("storage-tilde", ["tracking.storage_path=~/results"], "tracking.storage_path: '~/results' starts with '~'"),
    ("storage-long-name", ["tracking.storage_path={tmp}/" + "n" * 300 + "/r"], "tracking.storage_path: the folder "
                                                                               "name 'nnnn"),
    ("storage-past-path-max", ["tracking.storage_path={tmp}/" + "/".join(["d" * 200] * 20)],
     "tracking.storage_path: '"),
    ("storage-nul", ['tracking.storage_path="{tmp}/a\\0b"'], "tracking.storage_path: "),
    ("storage-empty", ["tracking.storage_path=''"], "tracking.storage_path: empty path"),
    ("storage-under-file", ["tracking.storage_path={tmp}/afile/r"], "tracking.storage_path: cannot create"),
    ("storage-immutable", ["tracking.storage_path={tmp}/frozen/results"], "tracking.storage_path: cannot create "
                                                                          "folders in"),
    ("report-root", ["tracking.report_dir=/"], "tracking.report_dir: '/' is a system folder"),
    ("report-home", [f"tracking.report_dir={HOME}"], f"tracking.report_dir: '{HOME}' is your home folder"),
    ("report-var-log", ["tracking.report_dir=/var/log"], "tracking.report_dir: '/var/log' is a system folder"),
    ("report-long-name", ["tracking.report_dir=" + "r" * 256], "tracking.report_dir: the folder name 'rrrr"),
    ("report-immutable", ["tracking.report_dir={tmp}/frozen/report"], "tracking.report_dir: cannot create "
                                                                      "folders in"),
    ("report-tilde", ["tracking.report_dir=~/r"], "tracking.report_dir: '~/r' starts with '~'"),
    ("data-train-absolute", ["data.kind=folder", "data.path={tmp}", "data.train_dir=/etc"],
     "data.train_dir: '/etc' must be a folder inside data.path"),
    ("data-val-escapes", ["data.kind=folder", "data.path={tmp}", "data.val_dir=../val"],
     "data.val_dir: '../val' must be a folder inside data.path"),
    ("data-path-nul", ["data.kind=folder", 'data.path="{tmp}/d\\0"'], "data.path: "),
    ("data-path-tilde", ["data.kind=folder", "data.path=~/imagenet"], "data.path: '~/imagenet' starts with '~'"),
]


@pytest.fixture
def inputs(tmp_path: Path):
    """tmp_path/in: a file (to put a folder under) and an immutable folder (chattr +i), beside the CLI's cwd."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "afile").write_text("x")
    frozen = inp / "frozen"
    frozen.mkdir()
    chattr = shutil.which("chattr")
    immutable = chattr is not None and subprocess.run([chattr, "+i", str(frozen)], capture_output=True).returncode == 0
    yield inp, immutable
    if immutable:
        subprocess.run([chattr, "-i", str(frozen)], check=True)


@pytest.mark.parametrize("case, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_path_or_name_is_refused_in_one_line_and_nothing_is_written(case, overrides, expected, inputs, cwd,
                                                                        capsys):
    inp, immutable = inputs
    if "immutable" in case and not immutable:
        pytest.fail("chattr +i failed: the immutable-folder cases need an ext2/3/4 or xfs /tmp and root")
    args = ["run"]
    for o in overrides:
        args += ["--set", o.replace("{tmp}", str(inp))]
    assert main(args) == 2
    err = capsys.readouterr().err
    line = err.strip().removeprefix("normstudy: ")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert line.startswith(expected), line
    assert len(line) < 400, line  # a long value is cut, the line stays readable
    assert written(cwd) == []
    assert sorted(p.name for p in inp.iterdir()) == ["afile", "frozen"] and not any((inp / "frozen").iterdir())


# --------------------------------------------------------------------------------------------------
# the report folder: empty, new, or a previous report of this study; anything else needs --force


def _report_folder(cwd: Path, files: dict[str, str]) -> Path:
    folder = cwd.parent / "report"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _report_json(study: str) -> str:
    return json.dumps({"schema_version": 1, "study": {"name": study, "run_id": "x"}})


@pytest.mark.parametrize("files, refused_with", [
    ({"notes.txt": "mine"}, "1 entries that are not a report of study 'quick' (e.g. 'notes.txt')"),
    ({"report.json": _report_json("other"), "report.html": "<html>"}, "the report of study 'other'"),
    ({"report.json": _report_json("quick"), "thesis.tex": "x"}, "2 entries that are not a report of study 'quick' "
                                                                "(e.g. 'thesis.tex')"),
    ({"report.json": "{not json", "report.md": "#"}, "2 entries that are not a report of study 'quick' "
                                                     "(e.g. 'report.json')"),
], ids=["other-files", "other-study", "report-plus-other-files", "broken-report-json"])
def test_a_report_folder_holding_other_files_is_refused_unless_force(files, refused_with, cwd, capsys):
    folder = _report_folder(cwd, files)
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert main(["run", "--set", f"tracking.report_dir={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"normstudy: tracking.report_dir: '{folder}' already holds {refused_with}; choose an empty or "
                   "new folder (--set tracking.report_dir=DIR), or pass --force to write the report there anyway")
    assert written(cwd) == [] and {p.name: p.read_text() for p in folder.iterdir()} == before
    spec = spec_mod.load(None, [f"tracking.report_dir={folder}"])
    preflight.check_report_folder(spec, force=True)  # --force lets it through


@pytest.mark.parametrize("files", [{}, {"report.json": _report_json("quick"), "report.html": "<html>",
                                        "report.md": "#", "stability_map.png": "png", "curves.png": "png"}],
                         ids=["empty", "previous-report-of-this-study"])
def test_an_empty_folder_or_a_previous_report_of_this_study_is_accepted(files, cwd):
    folder = _report_folder(cwd, files)
    preflight.check_report_folder(spec_mod.load(None, [f"tracking.report_dir={folder}"]))


def test_no_report_skips_the_report_folder_check(cwd, monkeypatch):
    """--no-report writes no report: a full report folder does not matter (the run goes on to the lock)."""
    folder = _report_folder(cwd, {"notes.txt": "mine"})
    reached = []

    def stop(*args, **kwargs):
        reached.append(True)
        raise SpecError("tracking.study_name: stopped here by the test")

    monkeypatch.setattr("study.runner.run_study", stop)
    assert main(["run", "--no-report", "--set", f"tracking.report_dir={folder}"]) == 2
    assert reached and written(cwd) == []  # the lock's folder and file are gone again


def test_the_default_paths_pass(cwd):
    preflight.check_paths(spec_mod.load(None))
    assert written(cwd) == []


def test_names_at_their_limits_pass(cwd):
    spec = spec_mod.load(None, [f"tracking.study_name={'s' * preflight.MAX_STUDY_NAME}",
                                f"tracking.experiment={'é' * preflight.MAX_EXPERIMENT_NAME}"])
    preflight.check_paths(spec)


# --------------------------------------------------------------------------------------------------
# placement the cluster can never give (a faked three-node cluster, as the multi-node test's)

NODES = [{"Alive": True, "Resources": {"CPU": 2.0, "ddp_node": 1.0}},
         {"Alive": True, "Resources": {"CPU": 1.0, "ddp_node": 1.0}},
         {"Alive": False, "Resources": {"CPU": 1.0, "ddp_node": 1.0}}]  # a dead node places nothing


@pytest.fixture
def three_nodes(monkeypatch):
    import ray

    alive = [n for n in NODES if n["Alive"]]
    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {k: sum(n["Resources"].get(k, 0) for n in alive)
                                                           for k in ("CPU", "ddp_node")})


@pytest.mark.parametrize("overrides, expected", [
    (["scaling.resources_per_worker={gpu_node: 1}"], "scaling.resources_per_worker: 2 workers × 1 'gpu_node' need 2 "
                                                     "but the cluster has 0"),
    (["scaling.resources_per_worker={ddp_node: 1.5}"], "scaling.resources_per_worker: 2 workers × 1.5 'ddp_node' need"),
    (["scaling.num_workers=3", "training.batch_size=63", "scaling.cpus_per_worker=0.5",
      "scaling.placement_strategy=STRICT_SPREAD"], "scaling.placement_strategy: STRICT_SPREAD puts each of the 3 "
                                                   "workers on its own node, but only 2 node(s) can hold one"),
    (["scaling.placement_strategy=STRICT_PACK", "scaling.cpus_per_worker=1.5"],
     "scaling.placement_strategy: STRICT_PACK puts all 2 workers on one node, but no node can hold them"),
], ids=["unknown-resource", "too-little-resource", "strict-spread-too-few-nodes", "strict-pack-no-node"])
def test_placement_the_cluster_cannot_give_is_refused(overrides, expected, three_nodes):
    spec = spec_mod.load(None, ["scaling.num_workers=2", *overrides])
    with pytest.raises(SpecError) as refused:
        preflight.check_placeable(spec)
    assert str(refused.value).startswith(expected), str(refused.value)


def test_placement_the_cluster_can_give_passes(three_nodes):
    preflight.check_placeable(spec_mod.load(None, ["scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD",
                                                   "scaling.resources_per_worker={ddp_node: 1}"]))
