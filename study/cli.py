"""The ``normstudy`` command: run a study, train one trial, write the report, list schemes, submit a job.

Each command imports what it uses inside its function: ray, torch and mlflow take seconds to import, and
``normstudy --help`` or a one-line spec error must not wait for them. Only the spec (pydantic) is imported
here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from study import cli_help
from study import spec as spec_mod
from study.spec import SpecError


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="YAML spec (default: the bundled quick default, specs/quick.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one spec value, e.g. --set training.lr=0.3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normstudy",
        description="Can a normalization scheme replace BatchNorm? Runs Ray Tune/Train studies of "
                    "normalization schemes on ResNets, logs to MLflow and writes a stability report.")
    cli_help.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", **cli_help.subparser_kwargs("run"))
    _spec_args(run)
    run.add_argument("--schemes", help="comma-separated scheme names, or 'all' for every registered scheme")
    run.add_argument("--resume", action="store_true", help="continue the study of the same name")
    run.add_argument("--fresh", action="store_true", help="replace an existing study of the same name")
    run.add_argument("--no-report", action="store_true", help="skip writing the stability report")
    run.add_argument("--partial-report", action="store_true",
                     help="if the study is interrupted (SIGINT/SIGTERM), still write the report of the trials that "
                          "finished, marked partial (default: no report of an interrupted study)")
    run.add_argument("--force", action="store_true",
                     help="write the report into tracking.report_dir even if that folder holds other files")

    train = sub.add_parser("train", **cli_help.subparser_kwargs("train"))
    _spec_args(train)
    train.add_argument("--scheme", required=True, help="scheme name (see `normstudy schemes`)")

    sub.add_parser("schemes", **cli_help.subparser_kwargs("schemes"))

    report = sub.add_parser("report", **cli_help.subparser_kwargs("report"))
    try:
        from analysis.report import add_arguments

        add_arguments(report)
    except ImportError:  # analysis not installed: the command says so when used
        pass

    submit = sub.add_parser("submit", **cli_help.subparser_kwargs("submit"))
    _spec_args(submit)
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    submit.add_argument("--working-dir", default=".",
                        help="folder uploaded as the job's working dir (default: '.', the repository root); "
                             ".gitignore and .rayignore apply")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    submit.add_argument("--dry-run", action="store_true", help="only print the command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM as SIGINT: an exception, so that what is open is closed (a study installs its own handler)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(f"normstudy: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        more = "; `normstudy run --resume` continues the study" if args.command == "run" else ""
        print(f"normstudy: interrupted by {signal.Signals(signum).name}{more}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupted(signum: int, frame: object) -> None:
    from study.interrupts import Interrupted

    raise Interrupted(signum)


def _load(args: argparse.Namespace) -> spec_mod.StudySpec:
    overrides = list(args.overrides)
    if getattr(args, "schemes", None):
        from trainers import norms

        names = norms.names() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",") if s.strip()]
        overrides.append(f"schemes=[{', '.join(names)}]")
    return spec_mod.load(args.spec, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    """Checks every name and path, takes the study's driver lock (study.driver_lock: one driver a study),
    runs the study, prints its summary (the report's rules), writes the report and logs it to the study's
    MLflow runs (``report/``). Exit 0; 1 when a trial errored (raised); 2 for a refused spec; 128 + the
    signal (130 SIGINT, 143 SIGTERM) for an interrupted study, which gets no report unless
    ``--partial-report``."""
    from analysis.report import write_report
    from study import driver_lock, preflight
    from study.browse import browse_lines
    from study.results import summary_table
    from study.runner import StudyInterrupted, resolve_paths, run_study
    from study.tracking import StudyTracker

    raw = _load(args)
    preflight.check_paths(raw)  # the spec as given ('~' is refused here), before anything is written
    spec = resolve_paths(raw)
    if not args.no_report or args.partial_report:
        preflight.check_report_folder(spec, force=args.force)
    with driver_lock.hold(spec.tracking.storage_path, spec.tracking.study_name):  # held to the end
        try:
            result = run_study(spec, resume=args.resume, fresh=args.fresh, paths_checked=True, announce=_announce)
        except StudyInterrupted as stopped:
            return _interrupted(args, spec, stopped)
        print()
        print(summary_table(result))
        reruns = f" and {len(result.reruns)} seed re-runs" if result.reruns else ""  # study/reruns.py
        print(f"\n{len(result.trials)} trials{reruns} in {result.seconds:.0f} s.")
        tracker = StudyTracker(result.tracking_uri, result.experiment)
        print("\n".join(browse_lines(result.tracking_uri, result.experiment, tracker.experiment_id)))
        print(f"Ray Tune results: {result.storage_path}")
        if not args.no_report:
            html = write_report(result.tracking_uri, preflight.report_folder(spec), experiment=result.experiment,
                                study_run_id=result.study_run_id,
                                publisher=tracker)
            print(f"Report: {html}")
    errored = sum(r.error is not None for r in result.trials)
    if errored:
        print(f"normstudy: {errored} of {len(result.trials)} trials errored (raised an exception, counted in no "
              f"rate); why: each one's MLflow run (status FAILED, tag normstudy.failure_reason) in "
              f"{result.tracking_uri}", file=sys.stderr)
        return 1
    return 0


def _announce(spec: spec_mod.StudySpec, notes: list[str]) -> None:
    """The study's first lines, once its preflight has passed (a refused study prints nothing on stdout)."""
    print(f"normstudy: study '{spec.tracking.study_name}': {', '.join(e.name for e in spec.schemes)} "
          f"({spec.search.mode} search), MLflow {spec.tracking.tracking_uri}", flush=True)
    for note in notes:
        print(f"normstudy: {note}", flush=True)


def _interrupted(args: argparse.Namespace, spec: spec_mod.StudySpec, stopped) -> int:
    """An interrupted study: what finished, the runs closed KILLED, the exit code of the signal."""
    from study import preflight
    from study.results import summary_table

    result = stopped.result
    if result is not None and result.trials:
        print()
        print(summary_table(result))
    print(f"normstudy: interrupted by {stopped.name}: {stopped.finished} of {stopped.budget} trials finished; "
          "every run this driver opened is closed KILLED; `normstudy run --resume` completes the study",
          file=sys.stderr, flush=True)
    if args.partial_report and result is not None and result.trials:
        from study.partial_report import write_partial_report

        try:
            html = write_partial_report(result.tracking_uri, result.experiment, result.study_run_id,
                                        preflight.report_folder(spec), signal_name=stopped.name,
                                        finished=stopped.finished, budget=stopped.budget)
        except Exception as err:  # noqa: BLE001 - the exit code must stay the signal's
            print(f"normstudy: the partial report was not written ({str(err).splitlines()[0] if str(err) else err!r})",
                  file=sys.stderr)
        else:
            print(f"Partial report: {html}")
    return stopped.exit_code


def cmd_train(args: argparse.Namespace) -> int:
    """One trial through Ray Train's TorchTrainer (N workers from the spec), outside any Tune study: the same
    trial config, trainer builder, params and end tags as a study's trial. An unknown scheme is refused
    before Ray or MLflow is imported."""
    spec = _load(args)
    in_study = [e.name for e in spec.schemes]
    if args.scheme not in in_study:
        from trainers import norms

        raise SpecError(cli_help.unknown_scheme(args.scheme, in_study, norms.names()))
    from study.preflight import preflight
    from study.runner import init_ray, resolve_paths
    from study.torch_trainer import build_torch_trainer
    from study.tracking import StudyTracker
    from study.trial import StudyContext, end_tags, loop_config, trial_params
    from study.trial_configs import TrialConfigs

    spec = resolve_paths(spec)
    trial = TrialConfigs(spec).resolve(args.scheme, {"seed": spec.training.seed})
    init_ray(spec)
    for note in preflight(spec):
        print(f"normstudy: {note}", flush=True)
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"train/{args.scheme}",
                                    tags={"normstudy.role": "train", "normstudy.scheme": args.scheme})
    run_id = run.info.run_id
    context = StudyContext(spec.tracking, spec.scaling, spec_mod.flatten(spec), {})
    tracker.log_params(run_id, trial_params(context, trial))
    trainer = build_torch_trainer(loop_config(trial, spec.tracking.tracking_uri, run_id), spec.scaling,
                                  name=f"train-{args.scheme}-{run_id[:8]}", storage_path=spec.tracking.storage_path)
    try:
        metrics = dict(trainer.fit().metrics or {})
    except BaseException as err:
        tracker.finish(run_id, "FAILED", reason=repr(err))
        raise
    tracker.set_tags(run_id, end_tags(metrics))
    tracker.finish(run_id)
    keys = ["steps_done", "outcome", "diverged", "divergence_cause", "divergence_step", "divergence_layer",
            "collapse_cause", "final_train_top1", "final_test_top1", "final_gap", "step_time_mean_s"]
    shown = [f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if k in metrics]
    print(f"{args.scheme}: " + "  ".join(shown))
    print(f"MLflow run {run_id} in {spec.tracking.tracking_uri}")
    return 0


def cmd_schemes(args: argparse.Namespace) -> int:
    from trainers import norms

    width = max(map(len, norms.names()))  # the longest name sets the column (wn_trelu, ws_gn, ...)
    for name in norms.names():
        print(f"{name:{width}s}  {norms.get(name).paper}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import main as report_main
    from study import store
    from study.tracking import StudyTracker

    # another program's database or a half-made store is refused before MLflow would write its tables into it
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    if "://" not in uri and uri.endswith((".db", ".sqlite")):
        uri = f"sqlite:///{Path(uri).absolute()}"
    db = store.sqlite_file(uri)
    if db is not None and db.is_file():
        try:
            store.check(db)
        except SpecError as err:
            raise SpecError(str(err).replace(store.FIELD, "--tracking-uri", 1)) from None

    return report_main(args, publisher_factory=StudyTracker)  # the report is logged through the study's tracker


def submit_command(args: argparse.Namespace) -> list[str]:
    """The `ray job submit` that runs this spec on a cluster (the README's command).

    The working dir (``--working-dir``, default ``.``: the repository root, less what .gitignore/.rayignore
    exclude) is uploaded and the entrypoint is ``python -m study.cli run`` in it, so the job runs the
    uploaded source with the cluster's ``python``, which needs the dependencies, not the package. A spec
    inside the working dir is passed relative to it (it is read from the uploaded copy); one outside is
    passed as an absolute path, which the head node must be able to read (true on a one-machine cluster).
    """
    entry = ["python", "-m", "study.cli", "run"]
    if args.spec:
        entry += ["--spec", _job_spec_path(args.spec, args.working_dir)]
    for item in args.overrides:
        entry += ["--set", item]
    cmd = ["ray", "job", "submit", "--address", args.address, "--working-dir", args.working_dir]
    if args.no_wait:
        cmd.append("--no-wait")
    return cmd + ["--"] + entry


def _job_spec_path(spec: str, working_dir: str) -> str:
    # abspath, not resolve(): specs/quick.yaml is a symlink into study/specs/ and must stay specs/quick.yaml.
    path, root = os.path.abspath(spec), os.path.abspath(working_dir)
    if os.path.commonpath([path, root]) == root:
        return Path(os.path.relpath(path, root)).as_posix()
    return path


def _submit_auth_env() -> dict[str, str]:
    """``RAY_AUTH_MODE=token`` when it is unset and a token is at hand: since Ray 2.59 `ray start --head`
    turns token auth on by itself when ~/.ray/auth_token exists, but `ray job submit` sends the token only
    with RAY_AUTH_MODE=token (docs/design.md §11). A token sent to a cluster without auth is ignored."""
    if os.environ.get("RAY_AUTH_MODE"):
        return {}
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        return {"RAY_AUTH_MODE": "token"}
    return {}


def _submit_notes(spec, args: argparse.Namespace) -> list[str]:
    """What would quietly go wrong in the job: it runs in a temporary copy of the working dir."""
    notes = []
    uri = spec.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        notes.append(f"tracking.tracking_uri '{uri}' is relative to the job's temporary working dir, where its "
                     "runs would be lost: --set tracking.tracking_uri=http://MLFLOW_HOST:5000 (or sqlite:////abs.db)")
    if not os.path.isabs(spec.tracking.storage_path):
        notes.append(f"tracking.storage_path '{spec.tracking.storage_path}' is relative to the job's temporary "
                     "working dir (--resume could not find it): --set tracking.storage_path=/abs/path")
    if not os.path.isfile(os.path.join(args.working_dir, "study", "cli.py")):
        notes.append(f"--working-dir '{args.working_dir}' holds no normstudy source (study/cli.py): the cluster's "
                     "python must have normstudy installed; run from the repository root to ship this checkout")
    if args.spec and os.path.isabs(_job_spec_path(args.spec, args.working_dir)):
        notes.append(f"--spec '{args.spec}' is outside --working-dir '{args.working_dir}': the job reads it at "
                     "that absolute path on the head node; put it inside the working dir to ship it")
    return notes


def cmd_submit(args: argparse.Namespace) -> int:
    spec = _load(args)  # refuse a bad spec before anything is uploaded
    for note in _submit_notes(spec, args):
        print(f"normstudy: note: {note}", file=sys.stderr)
    cmd, auth = submit_command(args), _submit_auth_env()
    if auth:
        print("normstudy: note: running it with RAY_AUTH_MODE=token (a Ray auth token was found)", file=sys.stderr)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    # `ray` of this environment even when its bin/ is not on PATH (e.g. /path/to/venv/bin/normstudy submit).
    here = Path(sys.executable).parent / "ray"
    ray_exe = str(here) if here.is_file() else shutil.which("ray")
    if ray_exe is None:
        print("normstudy: `ray` not found on PATH; install ray[default] or activate the environment that has it",
              file=sys.stderr)
        return 127
    return subprocess.call([ray_exe, *cmd[1:]], env={**os.environ, **auth})


COMMANDS = {"run": cmd_run, "train": cmd_train, "schemes": cmd_schemes, "report": cmd_report, "submit": cmd_submit}

if __name__ == "__main__":
    sys.exit(main())
