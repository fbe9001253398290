"""Issue 23 §1, §3: a SQLite MLflow store is made whole by one process, however many start at once, and a file
that is not a usable MLflow store is refused before anything is written to it (``study/store.py``).

The faults are real: processes started at the same instant on a fresh folder (each through
``StudyTracker``, the path every normstudy process takes to the store), another program's SQLite database,
the half-made store two racing MLflow processes really left behind (``conftest.half_made_store``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import store
from study.cli import main
from study.spec import SpecError
from tests.reliability.conftest import cli_env, foreign_db, half_made_store, new_store


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inspect_tells_each_kind_of_file_apart(tmp_path):
    assert store.inspect(tmp_path / "none.db").kind == "missing"
    (tmp_path / "empty.db").touch()
    assert store.inspect(tmp_path / "empty.db").kind == "empty"
    assert store.inspect(foreign_db(tmp_path / "app.db")) == store.StoreState("foreign", "orders, users")
    half = store.inspect(half_made_store(tmp_path / "half.db"))
    assert (half.kind, half.detail, half.runs) == ("half", "_alembic_tmp_experiments", 0)
    assert store.inspect(new_store(tmp_path / "new.db")).kind == "ready"
    con = sqlite3.connect(tmp_path / "new.db")
    con.execute("UPDATE alembic_version SET version_num = 'c8d9e0f1a2b3'")  # a real, older revision
    con.commit()
    con.close()
    assert store.inspect(tmp_path / "new.db") == store.StoreState("outdated", "c8d9e0f1a2b3", 0)


def test_ensure_makes_a_new_store_in_one_rename_and_leaves_no_lock_or_private_file(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    store.ensure(uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]
    before = _digest(tmp_path / "m.db")
    store.ensure(uri)  # a ready store: nothing is written, no lock taken
    assert _digest(tmp_path / "m.db") == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]


def test_an_empty_file_becomes_a_store_and_a_killed_maker_leaves_only_its_private_file(tmp_path):
    db = tmp_path / "m.db"
    db.touch()
    old = time.time() - 2 * store.SETTLE_S
    os.utime(db, (old, old))
    (tmp_path / ".m.db.4242.new").write_bytes(b"half of a store")  # a maker SIGKILLed mid-migration
    store.ensure(f"sqlite:///{db}")
    assert store.inspect(db).kind == "ready" and sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]


@pytest.mark.parametrize("make, words", [
    (foreign_db, "is a SQLite database but not an MLflow store (it has tables orders, users); nothing was written"),
    (half_made_store, "left half-made by an interrupted schema migration (_alembic_tmp_experiments); it holds no "
                      "runs: remove it"),
], ids=["foreign", "half-made"])
def test_a_file_that_is_no_usable_store_is_refused_and_left_as_it_was(tmp_path, make, words):
    db = make(tmp_path / "x.db")
    before = _digest(db)
    with pytest.raises(SpecError) as err:
        store.ensure(f"sqlite:///{db}")
    assert str(err.value).startswith(f"tracking.tracking_uri: '{db}' ") and words in str(err.value)
    assert _digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_normstudy_report_refuses_another_programs_database_without_touching_it(tmp_path, capsys):
    db = foreign_db(tmp_path / "app.db")
    before = _digest(db)
    assert main(["report", "--tracking-uri", str(db), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"normstudy: --tracking-uri: '{db}' is a SQLite database but not an MLflow store")
    assert _digest(db) == before and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# many processes at once on a fresh folder

OPENER = r'''
import sys, time
from pathlib import Path
from study.tracking import StudyTracker

root, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    go = root / f"go{r}"
    while not go.exists():
        time.sleep(0.005)
    start = float(go.read_text() or 0)
    while time.time() < start:  # every process opens the store at the same instant
        pass
    try:
        tracker = StudyTracker(f"sqlite:///{root / f'r{r}' / 'mlruns.db'}", f"study-{me}")
        tracker.client.create_run(tracker.experiment_id, run_name=f"{me}")
        (root / f"r{r}" / f"{me}.ok").write_text("ok")
    except BaseException as err:  # noqa: BLE001 - the test reads what went wrong
        (root / f"r{r}" / f"{me}.err").write_text(repr(err))
'''


@pytest.mark.integration
def test_several_processes_opening_one_new_store_at_once_never_break_it(tmp_path):
    """4 processes (4 different studies' trackers) open one new SQLite store at the same instant, 10 times,
    each time in a fresh folder: every open succeeds and every store is whole, with all 4 experiments and runs.
    (Without study.store the same race broke the store for good: docs/reliability.md, case 9a.)"""
    procs, rounds = 4, 10
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    workers = [subprocess.Popen([sys.executable, str(script), str(tmp_path), f"p{k}", str(rounds)], env=cli_env())
               for k in range(procs)]
    try:
        for r in range(rounds):
            (tmp_path / f"r{r}").mkdir()
            (tmp_path / f"go{r}").write_text(str(time.time() + (8.0 if r == 0 else 0.5)))  # round 0: imports
            deadline = time.time() + 120
            while len(list((tmp_path / f"r{r}").glob("p*.*"))) < procs and time.time() < deadline:
                time.sleep(0.05)
            errors = {p.name: p.read_text() for p in (tmp_path / f"r{r}").glob("*.err")}
            assert not errors, f"round {r}: {errors}"
            assert len(list((tmp_path / f"r{r}").glob("*.ok"))) == procs, f"round {r} timed out"
            db = tmp_path / f"r{r}" / "mlruns.db"
            assert store.inspect(db).kind == "ready"
            con = sqlite3.connect(db)
            names = {n for (n,) in con.execute("SELECT name FROM experiments")}
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
            con.close()
            assert names == {"Default"} | {f"study-p{k}" for k in range(procs)} and runs == procs
            assert sorted(p.name for p in (tmp_path / f"r{r}").iterdir() if not p.name.startswith("p")) == [
                "mlruns.db"]  # no lock file, no private file left
    finally:
        for w in workers:
            w.kill()
            w.wait()
