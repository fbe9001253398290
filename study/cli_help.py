"""What ``normstudy --help`` and each subcommand's ``--help`` say: a one-line summary, a description and
examples; and ``normstudy --version`` (the installed package's version, from its metadata)."""

from __future__ import annotations

import argparse
from importlib import metadata

PACKAGE = "normstudy"

# subcommand: (one line for `normstudy --help`, the description of its own --help, examples)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "run": ("run a study (no --spec: the quick CPU default)",
            "Run a study: every scheme of the spec over its search (grid, optuna or boundary) through Ray Tune, "
            "each trial a Ray Train run logged to MLflow; then print the summary table and the runs table's link, "
            "write the stability report (tracking.report_dir) and log it to the study's MLflow runs.",
            ("normstudy run                                   # the quick default on CPU (about 5 min on 2 cores)",
             "normstudy run --spec specs/digits.yaml --schemes bn,wn",
             "normstudy run --set search.seeds=[0,1] --set training.max_steps=300",
             "normstudy run --resume                          # continue an interrupted study")),
    "train": ("train one trial through Ray Train and print its summary",
              "Train one trial of one scheme (the spec's training.lr and training.seed) through Ray Train's "
              "TorchTrainer, outside any study: the same trial config, params and end tags as a study's trial.",
              ("normstudy train --scheme wn",
               "normstudy train --scheme bn --set training.lr=0.3 --set training.max_steps=100")),
    "schemes": ("list the registered normalization schemes",
                "List every registered normalization scheme with the paper it comes from; a spec's schemes and "
                "--schemes take these names.",
                ("normstudy schemes",)),
    "report": ("write the stability report of a study from MLflow",
               "Read a study from MLflow and write its stability report (report.html, report.md, report.json and "
               "the plots) into --out, then log it to the study's MLflow runs (unless --no-publish).",
               ("normstudy report                                # the latest study in sqlite:///mlruns.db",
                "normstudy report --tracking-uri http://127.0.0.1:5000 --study-name quick --out quick_report",
                "normstudy report --study 0123abcd... --no-publish")),
    "submit": ("print and run the `ray job submit` for a spec on a cluster",
               "Print the `ray job submit` command that runs `normstudy run` with this spec on a Ray cluster, then "
               "run it (--dry-run: only print it). The working dir is uploaded as the job's.",
               ("normstudy submit --address http://127.0.0.1:8265 --spec specs/digits.yaml "
                "--set tracking.tracking_uri=http://MLFLOW_HOST:5000",
                "normstudy submit --address http://127.0.0.1:8265 --dry-run")),
}


def version() -> str:
    """The installed package's version (pyproject.toml's, through the package metadata)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def subparser_kwargs(command: str) -> dict:
    """``add_parser`` keyword arguments of ``command``: its help line, description and examples."""
    line, description, examples = COMMANDS[command]
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return {"help": line, "description": description, "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def unknown_scheme(name: str, in_study: list[str], registered: list[str]) -> str:
    """The one line refusing ``--scheme NAME`` (before Ray or MLflow start): what the study and the
    registry hold."""
    if name in registered:
        return (f"--scheme: '{name}' is not in this study ({', '.join(in_study)}); add it with "
                f"--set 'schemes=[{', '.join([*in_study, name])}]'")
    return f"--scheme: unknown scheme '{name}'; the registered schemes are: {', '.join(registered)}"
