"""The ``normstudy`` command: run a study, train one trial, write the report, list schemes, submit a job."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

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
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study (no --spec: the quick CPU default)")
    _spec_args(run)
    run.add_argument("--schemes", help="comma-separated scheme names, or 'all' for every registered scheme")
    run.add_argument("--resume", action="store_true", help="continue the study of the same name")
    run.add_argument("--fresh", action="store_true", help="replace an existing study of the same name")
    run.add_argument("--no-report", action="store_true", help="skip writing the stability report")

    train = sub.add_parser("train", help="train one trial through Ray Train and print its summary")
    _spec_args(train)
    train.add_argument("--scheme", required=True, help="scheme name (see `normstudy schemes`)")

    sub.add_parser("schemes", help="list the registered normalization schemes")

    report = sub.add_parser("report", help="write the stability report of a study from MLflow")
    try:
        from analysis.report import add_arguments

        add_arguments(report)
    except ImportError:  # analysis not installed: the command says so when used
        pass

    submit = sub.add_parser("submit", help="print and run the `ray job submit` for a spec on a cluster")
    _spec_args(submit)
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    submit.add_argument("--dry-run", action="store_true", help="only print the command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(f"normstudy: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normstudy: interrupted; `normstudy run --resume` continues the study", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace):
    from study import spec as spec_mod

    overrides = list(args.overrides)
    if getattr(args, "schemes", None):
        from trainers import norms

        names = norms.names() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",") if s.strip()]
        overrides.append(f"schemes=[{', '.join(names)}]")
    return spec_mod.load(args.spec, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from study.runner import resolve_paths, run_study, summary_table

    spec = _load(args)
    print(f"normstudy: study '{spec.tracking.study_name}': {', '.join(e.name for e in spec.schemes)} "
          f"({spec.search.mode} search), MLflow {spec.tracking.tracking_uri}", flush=True)
    result = run_study(spec, resume=args.resume, fresh=args.fresh)
    print()
    print(summary_table(result))
    print(f"\n{len(result.outcomes)} trials in {result.seconds:.0f} s.")
    print(f"MLflow: {result.tracking_uri} (experiment '{result.experiment}'); "
          f"browse with: mlflow ui --backend-store-uri {result.tracking_uri}")
    print(f"Ray Tune results: {result.storage_path}")
    if not args.no_report:
        from analysis.report import write_report

        out = Path(resolve_paths(spec).tracking.storage_path).parent / spec.tracking.report_dir
        html = write_report(result.tracking_uri, out, experiment=result.experiment, study_run_id=result.study_run_id)
        print(f"Report: {html}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One trial through Ray Train's TorchTrainer (N workers from the spec), outside any Tune study."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from study import spec as spec_mod
    from study.preflight import preflight
    from study.runner import init_ray, resolve_paths
    from study.tracking import StudyTracker
    from trainers.loop import train_loop_per_worker

    spec = resolve_paths(_load(args))
    spec.scheme(args.scheme)  # must be in the study's schemes
    init_ray(spec)
    preflight(spec)
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"train/{args.scheme}",
                                    tags={"normstudy.role": "train", "normstudy.scheme": args.scheme})
    params = spec_mod.flatten(spec)
    params["scheme"] = args.scheme
    tracker.log_params(run.info.run_id, params)
    s = spec.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "scheme": args.scheme, "session": "train",
                           "tracking_uri": spec.tracking.tracking_uri, "run_id": run.info.run_id},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker={"CPU": s.cpus_per_worker,
                                                                     **({"GPU": 1} if s.use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"train-{args.scheme}-{run.info.run_id[:8]}",
                                       storage_path=spec.tracking.storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=s.max_failures)),
    )
    try:
        metrics = dict(trainer.fit().metrics or {})
    except BaseException as err:
        tracker.finish(run.info.run_id, "FAILED", reason=repr(err))
        raise
    tracker.set_tags(run.info.run_id, {k: str(v) for k, v in metrics.items()
                                       if k in ("diverged", "divergence_cause", "divergence_step", "divergence_layer")})
    tracker.finish(run.info.run_id)
    keys = ["steps_done", "diverged", "divergence_cause", "divergence_step", "divergence_layer",
            "final_train_top1", "final_test_top1", "final_gap", "step_time_mean_s"]
    shown = [f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if k in metrics]
    print(f"{args.scheme}: " + "  ".join(shown))
    print(f"MLflow run {run.info.run_id} in {spec.tracking.tracking_uri}")
    return 0


def cmd_schemes(args: argparse.Namespace) -> int:
    from trainers import norms

    for name in norms.names():
        cls = norms.get(name)
        print(f"{name:10s} {cls.paper}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import main as report_main

    return report_main(args)


def submit_command(args: argparse.Namespace) -> list[str]:
    """The `ray job submit` that runs this spec on a cluster. The entrypoint is ``python -m study.cli``
    so it works from the uploaded working dir without installing the console script there."""
    entry = ["python", "-m", "study.cli", "run"] + (["--spec", args.spec] if args.spec else [])
    for item in args.overrides:
        entry += ["--set", item]
    cmd = ["ray", "job", "submit", "--address", args.address, "--working-dir", "."]
    if args.no_wait:
        cmd.append("--no-wait")
    return cmd + ["--"] + entry


def cmd_submit(args: argparse.Namespace) -> int:
    _load(args)  # refuse a bad spec before anything is uploaded
    cmd = submit_command(args)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, env=dict(os.environ))


COMMANDS = {"run": cmd_run, "train": cmd_train, "schemes": cmd_schemes, "report": cmd_report, "submit": cmd_submit}

if __name__ == "__main__":
    sys.exit(main())
