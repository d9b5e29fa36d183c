"""``eraselab tiny``: train the built-in model, check it against its quality bars, print where it lives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eraselab.cli_support import user_errors
from eraselab.errors import EraselabError

tiny_app = typer.Typer(no_args_is_help=True, help="The built-in tiny text-to-image model: train, check, locate.")


@tiny_app.command("train")
@user_errors
def tiny_train(
    out: Annotated[Path, typer.Option(help="Run directory; an interrupted run resumes from it.")],
    seed: Annotated[int, typer.Option(help="Seed of every random choice of the run.")] = 0,
) -> None:
    """Train the tiny model (VAE, tiny CLIP, UNet, classifier); resumable from checkpoints.

    Example: eraselab tiny train --out tiny-run --seed 0
    """
    from eraselab.models.tiny.train import train_tiny
    from eraselab.outputs import writable_directory

    log = train_tiny(writable_directory(out), seed=seed)
    typer.echo(f"trained in {log['total_seconds']:.0f} s; pipeline in {out / 'pipeline'}")


@tiny_app.command("check")
@user_errors
def tiny_check(
    seed: Annotated[int, typer.Option(help="Seed of the drawn images and of the generated images.")] = 0,
    model: Annotated[str, typer.Option(help="'tiny' or a pipeline directory made by `tiny train`.")] = "tiny",
    classifier: Annotated[Path | None, typer.Option(help="Classifier directory (default: the shipped one).")] = None,
    per_prompt: Annotated[int, typer.Option(help="Images per (shape, colour) prompt.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as one JSON object.")] = False,
) -> None:
    """Measure the tiny model against its quality bars.

    Example: eraselab tiny check --json
    """
    from eraselab.models.tiny.check import run_check

    if per_prompt < 1:
        raise EraselabError(f"--per-prompt must be at least 1, got {per_prompt}")
    result = run_check(model, classifier, seed=seed, per_prompt=per_prompt, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for name, bar in result["bars"].items():
        mark = "pass" if bar["passed"] else "FAIL"
        typer.echo(f"{mark}  {name:32s} {bar['value']:.3f}  (bar {bar['bar']})")
    typer.echo(f"{result['settings']['images']} images in {result['seconds']:.0f} s")


@tiny_app.command("path")
@user_errors
def tiny_path_command(
    part: Annotated[str, typer.Argument(help="pipeline, classifier or clip.")] = "pipeline",
) -> None:
    """Print the directory of the shipped tiny pipeline (or classifier, or CLIP).

    Example: python -c "from diffusers import StableDiffusionPipeline as P; P.from_pretrained('$(eraselab tiny path)')"
    """
    from eraselab.models.tiny import tiny_path

    typer.echo(str(tiny_path(part)))
