"""The MLflow UI as a user opens it: a study run against a real ``mlflow server`` (127.0.0.1, proxied
artifacts), then checked through MLflow's REST API and in headless Chromium (the runs table in the
model-training view with the study → scheme → trial rows, the run notes, the report among the artifacts,
the compare view of a scheme's trials).

Chromium is driven over its DevTools protocol (aiohttp, which mlflow depends on, speaks the websocket):
the runs table's nested rows only show once their parent row is expanded, which takes a click.
Unit tests of the notes and links first.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from analysis.scheme_metrics import rounded
from study import cli, runs_view
from study.run_names import trial_run_name
from study.tracking import runs_table_url, scheme_progress_note, trial_note
from tests.study.test_submit import _kill_tree, _start_mlflow, _wait_http

CHROMIUM = Path("/usr/bin/chromium")
# The quick default cut down: 2 schemes × (a sane and an absurd lr) × 1 seed × 20 steps.
SMALL = ["schemes=[bn, wn]", "search.grid_lr=[0.1, 1000.0]", "search.grid_init_scale=[1.0]", "search.seeds=[0]",
         "training.max_steps=20", "training.report_every=5", "training.eval_every=20", "training.batch_size=32",
         "training.lr_reference_batch=32", "data.train_size=256", "data.test_size=128", "data.train_eval_size=64",
         "model.cifar_blocks=[1, 1]", "tracking.experiment=ui", "tracking.study_name=ui"]
NOTE = "mlflow.note.content"


# --------------------------------------------------------------------------------------------------
# notes and links


def test_trial_note_says_what_happened_in_one_line():
    assert trial_note({"diverged": 1.0, "divergence_step": 37.0, "divergence_cause": "loss_spike",
                       "divergence_layer": "layer3.0.conv2.v"}) == \
        "diverged at step 37: loss_spike, layer layer3.0.conv2.v"
    assert trial_note({"diverged": 1.0, "divergence_step": 3.0, "divergence_cause": "non_finite_loss"}) == \
        "diverged at step 3: non_finite_loss"
    assert trial_note({"diverged": 0.0, "final_train_top1": 0.9712, "final_test_top1": 0.9149}) == \
        "train 0.97 / test 0.91"
    assert trial_note({"diverged": 0.0, "steps_done": 0.0}) == "finished 0 steps without a final evaluation"
    assert trial_note({"diverged": 0.0, "collapsed": 1.0, "collapse_step": 150.0, "collapse_cause": "dead_relu",
                       "collapse_layer": "layer2", "final_train_top1": 0.1, "final_test_top1": 0.1}) == \
        "collapsed at step 150: dead_relu, layer layer2; train 0.10 / test 0.10"
    assert trial_note({"diverged": 0.0, "collapsed": 0.0, "stalled": 1.0, "stall_loss_ratio": 0.961,
                       "final_train_top1": 0.18, "final_test_top1": 0.17}) == \
        "stalled: train loss 0.96 of its start; train 0.18 / test 0.17"


def _run(status: str, tags: dict, metrics: dict | None = None, params: dict | None = None):
    return SimpleNamespace(info=SimpleNamespace(status=status),
                           data=SimpleNamespace(tags=tags, metrics=metrics or {}, params=params or {}))


def test_scheme_progress_note_counts_trials_and_names_the_best():
    runs = [_run("FINISHED", {"diverged": "0"}, {"final_train_top1": 0.8, "final_test_top1": 0.7},
                 {"hp.lr": "0.1", "hp.init_scale": "1.0", "hp.seed": "0"}),
            _run("FINISHED", {"diverged": "0"}, {"final_train_top1": 0.9, "final_test_top1": 0.6}, {"hp.lr": "0.3"}),
            _run("FINISHED", {"diverged": "1", "divergence_cause": "loss_spike"}),
            _run("FINISHED", {"diverged": "0", "collapsed": "1", "collapse_cause": "dead_relu"},
                 {"final_train_top1": 0.9, "final_test_top1": 0.9}),  # at chance here, whatever it reads
            _run("FINISHED", {"diverged": "0", "stalled": "1", "outcome": "stalled"},
                 {"final_train_top1": 0.95, "final_test_top1": 0.95}),  # did not fit: never the best
            _run("RUNNING", {"diverged": "0"})]
    assert scheme_progress_note(runs) == ("5 trials finished, 1 diverged (1 loss_spike), 1 collapsed (1 dead_relu), "
                                          "1 stalled; 1 running; best: train 0.80 / test 0.70 (lr 0.1, init scale "
                                          "1.0, seed 0)")


def test_runs_table_url_opens_the_model_training_view():
    assert runs_table_url("3", server="http://127.0.0.1:5000/") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=normstudy&workflowType=machine_learning"
    assert runs_table_url("3", "ab", server="sqlite:////x/m.db") == \
        "#/experiments/3/runs/ab?workflowType=machine_learning"


# --------------------------------------------------------------------------------------------------
# a real server, a real study, a real browser


def _api(uri: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _tags(obj: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in obj.get("tags", [])}


def _artifacts(uri: str, run_id: str, path: str) -> set[str]:
    q = urllib.parse.urlencode({"run_id": run_id, "path": path})
    return {f["path"].split("/")[-1] for f in _api(uri, f"artifacts/list?{q}").get("files", [])}


class Chromium:
    """Headless Chromium on a DevTools port, one page: navigate, read the page's text, run a script,
    take a screenshot."""

    def __init__(self, profile: Path) -> None:
        self.profile, self.proc, self.ids = profile, None, itertools.count(1)

    async def __aenter__(self) -> Chromium:
        import aiohttp

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1900,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not open its DevTools port"
            await asyncio.sleep(0.2)
        port = port_file.read_text().split()[0]
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
            page = next(t for t in await r.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.http.close()
        _kill_tree(self.proc)

    async def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:  # events come in between; the answer carries our id
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg["error"]
                return msg.get("result", {})

    async def js(self, expression: str):
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    async def open(self, url: str, *texts: str, timeout: float = 60) -> str:
        """Go to ``url``; the page's text once every one of ``texts`` is on it."""
        await self.send("Page.navigate", url=url)
        return await self.wait_for(*texts, timeout=timeout)

    async def wait_for(self, *texts: str, timeout: float = 60) -> str:
        deadline, body = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            body = await self.js("document.body ? document.body.innerText : ''") or ""
            if all(t in body for t in texts):
                return body
            await asyncio.sleep(0.5)
        missing = [t for t in texts if t not in body]
        raise AssertionError(f"not on the page after {timeout:.0f} s: {missing}; the page read:\n{body[:3000]}")

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))
        return path


# Click the expander of every runs-table row not clicked yet (a row's id is its run id); returns how many.
EXPAND_ROWS = """(() => {
  const done = window.__expanded = window.__expanded || new Set();
  let n = 0;
  for (const row of document.querySelectorAll('[role=row][row-id]')) {
    const id = row.getAttribute('row-id');
    const button = row.querySelector('[col-id="attributes.`Run Name`"] button');
    if (button && !done.has(id)) { done.add(id); button.click(); n++; }
  }
  return n;
})()"""


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free loopback port, artifacts proxied (as a team's server runs); its URL."""
    server, uri, log = _start_mlflow(tmp_path)
    try:
        _wait_http(f"{uri}/health", server, log, timeout=120)
        yield uri
    finally:
        _kill_tree(server)


@pytest.mark.integration
def test_a_study_reads_in_the_mlflow_ui(mlflow_server, ray_cluster, tmp_path, monkeypatch, capsys):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium package is not installed (the CI script installs it)")
    uri = mlflow_server
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli.main(["run", *(a for o in SMALL + [f"tracking.tracking_uri={uri}"] for a in ("--set", o))]) == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if ln.startswith("[")]) == 4  # not a terminal: a line a trial

    # --- the REST API: the experiment's kind, the hierarchy, the notes, the artifacts ---------------------
    exp = _api(uri, "experiments/get-by-name?experiment_name=ui")["experiment"]
    exp_id, exp_tags = exp["experiment_id"], _tags(exp)
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"[runs table]({runs_table_url(exp_id)})" in exp_tags[NOTE]  # a link on MLflow's own page
    runs = _api(uri, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    by_role: dict[str, list[dict]] = {}
    for r in runs:
        r["tags"] = _tags(r["data"])
        r["metrics"] = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
        by_role.setdefault(r["tags"].get("normstudy.role"), []).append(r)
    (study,) = by_role["study"]
    schemes = {r["tags"]["normstudy.scheme"]: r for r in by_role["scheme"]}
    trials = by_role["trial"]
    assert set(schemes) == {"bn", "wn"} and len(trials) == 4
    study_id = study["info"]["run_id"]
    diverged = [t for t in trials if t["tags"]["diverged"] == "1"]
    stable = [t for t in trials if t["tags"]["diverged"] == "0"]
    assert diverged and stable  # lr 1000 diverges, lr 0.1 trains
    for t in diverged:
        tags = t["tags"]
        expected = f"diverged at step {tags['divergence_step']}: {tags['divergence_cause']}"
        assert tags[NOTE] == expected + (f", layer {tags['divergence_layer']}" if tags.get("divergence_layer") else "")
    for t in stable:  # trained to the end (a collapsed or stalled one says so first)
        tags, m = t["tags"], t["metrics"]
        expected = f"train {m['final_train_top1']:.2f} / test {m['final_test_top1']:.2f}"
        if tags.get("collapsed") == "1":
            layer = f", layer {tags['collapse_layer']}" if tags.get("collapse_layer") else ""
            expected = f"collapsed at step {tags['collapse_step']}: {tags['collapse_cause']}{layer}; {expected}"
        elif tags.get("stalled") == "1":
            expected = f"stalled: train loss {float(tags['stall_loss_ratio']):.2f} of its start; {expected}"
        assert tags[NOTE] == expected
    for t in trials:  # named by what it is; its outcome tag is the one rule's word
        assert t["info"]["run_name"] == trial_run_name(t["tags"]["normstudy.scheme"], t["tags"])
        assert t["tags"]["outcome"] in ("stable", "diverged", "collapsed", "stalled")
    report = json.loads(next(cwd.glob("**/report.json")).read_text())
    table = out[out.index("scheme      trials"):]
    for name, s in schemes.items():  # MLflow, the report and the CLI's table say the same numbers
        best, m = report["schemes"][name]["best"], s["metrics"]
        if best is not None and best["test_top1"]["mean"] is not None:
            assert m["best_test_top1"] == rounded(best["test_top1"]["mean"])
            row = next(ln for ln in table.splitlines() if ln.startswith(name))
            assert f"{best['test_top1']['mean']:.3f} (" in row
        assert m["diverged_rate"] == rounded(report["schemes"][name]["failures"]["diverged"]["rate"])
        assert s["tags"]["mlflow.parentRunId"] == study_id
        assert re.match(r"2 trials: \d stable, \d diverged", s["tags"][NOTE]), s["tags"][NOTE]
        assert _artifacts(uri, s["info"]["run_id"], "report") == {f"stability_{name}.png", f"curves_{name}.png"}
    assert f"- **wn**: {schemes['wn']['tags'][NOTE]}" in study["tags"][NOTE]
    report_dir = next(cwd.glob("**/report.html")).parent
    logged = _artifacts(uri, study_id, "report")
    assert {"report.html", "report.md", "report.json", "stability_bn.png", "stability_wn.png"} <= logged
    assert logged == {p.name for p in report_dir.iterdir() if p.suffix in (".html", ".md", ".json", ".png")}
    q = urllib.parse.urlencode({"path": "report/report.html", "run_uuid": study_id})
    with urllib.request.urlopen(f"{uri}/get-artifact?{q}", timeout=30) as r:  # what the UI's viewer fetches
        assert r.read() == (report_dir / "report.html").read_bytes()

    # --- the browser ------------------------------------------------------------------------------------
    shots = tmp_path / "screens"
    shots.mkdir()
    wn_trials = [t for t in trials if t["tags"]["normstudy.scheme"] == "wn"]
    div_trial = diverged[0]

    async def browse() -> None:
        async with Chromium(tmp_path / "profile") as page:  # a fresh profile: the UI's defaults
            await page.send("Page.enable")
            await page.send("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                            mobile=False)
            # The runs table, in the model-training view, with normstudy's columns: expand the study row, then
            # its scheme rows, and every run is on screen with its description.
            await page.open(runs_table_url(exp_id, server=uri), "7 matching runs", "Model training", "Description",
                            "final_test_top1")
            names = [study["info"]["run_name"], "ui/bn", "ui/wn", *(t["info"]["run_name"] for t in trials)]
            deadline, text = time.monotonic() + 60, ""
            while not all(n in text for n in names) and time.monotonic() < deadline:
                await page.js(EXPAND_ROWS)
                await asyncio.sleep(1.0)
                text = await page.js("document.body.innerText")
            notes = [r["tags"][NOTE][:30] for r in (*schemes.values(), *trials)]  # the table cuts long ones
            await page.wait_for(*names, *notes, "MLflow Assistant", timeout=5)  # the assistant panel open
            await page.screenshot(shots / "runs_table.png")
            # At 1600 px beside the assistant: the outcome and the scheme metrics' columns whole on screen, and
            # each scheme's row shows its values (rounded as logged)
            edge = await page.js("document.querySelector('.ag-center-cols-viewport').getBoundingClientRect().right")
            first = [runs_view.OUTCOME, *(f"metrics.`{k}`" for k in runs_view.FIRST)]
            right = await page.js("Object.fromEntries([...document.querySelectorAll('[role=columnheader][col-id]')]"
                                  ".map(h => [h.getAttribute('col-id'), h.getBoundingClientRect().right]))")
            shown = [c for c in first if c in right]
            assert len(shown) >= len(first) - 2, (first, right)  # a metric no run has gets no column
            assert all(right[c] <= edge + 1 for c in shown), (edge, right)
            for name, s in schemes.items():
                cells = await page.js(
                    f"Object.fromEntries([...document.querySelectorAll('[row-id=\"{s['info']['run_id']}\"] "
                    "[col-id]')].map(c => [c.getAttribute('col-id'), c.innerText.trim()]))")
                for key in ("best_test_top1", "diverged_rate"):
                    if key in s["metrics"]:
                        assert float(cells[f"metrics.`{key}`"]) == s["metrics"][key], (name, key, cells)
            # The schemes view: the scheme rows alone, the best first
            await page.open(runs_table_url(exp_id, server=uri, view=runs_view.SCHEMES_VIEW), "2 matching runs",
                            "best_test_top1")
            best = {f"ui/{n}": s["metrics"].get("best_test_top1") for n, s in schemes.items()}  # None: no stable seed

            def ranked(rows: list[str]) -> bool:  # every scheme; those with a best, best first (ties either way)
                values = [best[r] for r in rows if best[r] is not None]
                return sorted(rows) == sorted(best) and values == sorted(values, reverse=True)

            deadline, order = time.monotonic() + 15, []
            while not ranked(order) and time.monotonic() < deadline:  # the sorted rows replace the cached ones
                await asyncio.sleep(0.5)
                order = list(dict.fromkeys(await page.js(
                    "[...document.querySelectorAll('[role=row][row-id]')].map(r => r.innerText)"
                    ".filter(t => t.includes('ui/')).map(t => t.match(/ui\\/\\w+/)[0])")))
            assert ranked(order), (order, best)
            await page.open(runs_table_url(exp_id, server=uri), "7 matching runs")
            # The experiment's description above the table links back to this view (markdown rendered).
            assert await page.js("!!document.querySelector('a[href*=\"viewStateShareKey=normstudy\"]')")
            # A diverged trial's page says what happened; the study run's artifacts hold the report.
            await page.open(runs_table_url(exp_id, div_trial["info"]["run_id"], uri), div_trial["tags"][NOTE])
            await page.screenshot(shots / "diverged_trial.png")
            artifact = runs_table_url(exp_id, study_id, uri).replace("?", "/artifacts/report/report.html?")
            await page.open(artifact, "report.html", "report.json", "stability_wn.png")  # the folder open
            deadline = time.monotonic() + 60  # report.html previewed: MLflow renders it in a sandboxed frame
            while not await page.js("[...document.querySelectorAll('iframe')].some(f => f.src.startsWith('blob:'))"):
                assert time.monotonic() < deadline, "MLflow did not preview report.html"
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # the frame's own rendering
            await page.screenshot(shots / "study_artifacts.png")
            # MLflow's compare view of a scheme's trials: lr, init scale, seed, diverged, the final accuracies.
            q = urllib.parse.urlencode({"runs": json.dumps([t["info"]["run_id"] for t in wn_trials]),
                                        "experiments": json.dumps([exp_id]), "workflowType": "machine_learning"})
            text = await page.open(f"{uri}/#/compare-runs?{q}", "Tags", "final_train_top1", "final_test_top1")
            tags = text[text.rindex("Tags"):]
            for key in ("diverged", "init_scale", "lr", "seed"):
                assert re.search(rf"^{key}\t", tags, re.M), (key, tags[:1500])
            await page.js("[...document.querySelectorAll('h2, h3, span, div')].reverse()"  # the Metrics table up
                          ".find(e => e.textContent.trim() === 'Metrics')?.scrollIntoView()")
            await page.screenshot(shots / "compare_wn.png")

            # the report's maps at the size they are shown, in the same 1600 px window
            await page.open((report_dir / "report.html").resolve().as_uri(), "Stability map of wn")
            sizes = await page.js("[...document.images].filter(i => i.alt.startsWith('Stability map'))"
                                  ".map(i => [i.clientWidth, i.naturalWidth])")
            assert len(sizes) == 2 and all(shown >= 0.95 * drawn for shown, drawn in sizes), sizes
            await page.js("[...document.images].find(i => i.alt.startsWith('Stability map')).scrollIntoView()")
            await page.screenshot(shots / "report_map.png")

    asyncio.run(browse())
    for png in shots.iterdir():
        with Image.open(png) as im:
            assert np.asarray(im.convert("RGB")).std() > 10, png  # not a blank page
