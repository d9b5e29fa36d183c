"""The verbs around a run directory: ``eraselab run``, ``judge``, ``verify``, ``report`` and ``demo`` (registered
on the main app by :mod:`eraselab.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eraselab.cli_support import user_errors
from eraselab.errors import EraselabError


@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output directory for report.html and images.")] = Path("eraselab-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the first image of each prompt.")] = 0,
) -> None:
    """Run the end-to-end demo on the built-in tiny model and write an HTML report.

    Example: eraselab demo --out eraselab-demo
    """
    from eraselab.demo import run_demo

    report = run_demo(out, seed=seed)
    typer.echo(f"wrote {report}")


@user_errors
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[Path, typer.Option(help="Run directory (store.sqlite + images); a stopped run resumes.")],
    dry_run: Annotated[bool, typer.Option(help="Validate and print the grid size; generate nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run an experiment grid (models x edits x prompt groups x seeds x detectors) into a resumable store.

    On several GPUs or nodes, launch it with `accelerate launch -m eraselab run ...` (or `torchrun -m eraselab
    run ...`): each process does its share of the grid into the same store.

    Example: eraselab run experiment.yaml --out runs/star
    """
    from eraselab.experiment import run_experiment
    from eraselab.experiment.parse import load_experiment

    summary = run_experiment(load_experiment(experiment), out, progress=not as_json, dry_run=dry_run)
    typer.echo(json.dumps(summary) if as_json else ", ".join(f"{k}: {v}" for k, v in summary.items()))


@user_errors
def judge(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `eraselab run`.")],
    detector: Annotated[str, typer.Option(help="Detector name: tiny, nudenet or clip.")],
    option: Annotated[list[str] | None, typer.Option(help="Detector option KEY=VALUE; repeat.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Re-judge a run's stored images with another detector, without regenerating them.

    Example: eraselab judge runs/i2p --detector nudenet --option protocol=exposed8-0.45
    """
    from eraselab.experiment import judge_run
    from eraselab.experiment.config import DetectorConfig
    from eraselab.options import parse_key_values

    detectors = (DetectorConfig(detector, parse_key_values(option or [], "--option")),)
    summary = judge_run(run_dir, detectors, progress=not as_json)
    typer.echo(json.dumps(summary) if as_json else ", ".join(f"{k}: {v}" for k, v in summary.items()))


@user_errors
def verify(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `eraselab run`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check that every stored image of a run still matches its content hash (exit 2 naming those that do not;
    `eraselab run` makes them again).

    Example: eraselab verify runs/star
    """
    from eraselab.store import RunStore

    if not (run_dir / "store.sqlite").is_file():
        raise EraselabError(f"{run_dir} is not a run directory (no store.sqlite)")
    store = RunStore(run_dir)
    try:
        if store.meta("experiment") is None:
            raise EraselabError(f"{run_dir} holds no experiment (run `eraselab run` first)")
        checked = store.check_images()
    finally:
        store.close()
    summary = {"run_dir": str(run_dir), "images": checked, "damaged": 0}
    typer.echo(json.dumps(summary) if as_json else f"{run_dir}: all {checked} stored images match their hashes")


@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `eraselab run`.")],
) -> None:
    """Write report.html and summary.json for a run.

    Example: eraselab report runs/star
    """
    from eraselab.report import write_report

    page, summary = write_report(run_dir)
    typer.echo(f"wrote {page} and {summary}")


COMMANDS = (demo, run, judge, verify, report)
