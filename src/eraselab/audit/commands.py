"""``eraselab audit`` (registered on the main app by :mod:`eraselab.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eraselab.audit.plan import DEFAULT_BUDGET, DEFAULT_TEXT_BUDGET
from eraselab.cli_support import user_errors


@user_errors
def audit(
    concept: Annotated[str, typer.Option(help="The erased concept (tiny: star, red, outlined, ...).")],
    out: Annotated[Path, typer.Option(help="Audit directory: run/ (resumable) and card.md, card.json, card.html.")],
    model: Annotated[str, typer.Option(help="'tiny', a local diffusers directory, or a hub id.")] = "tiny",
    edit: Annotated[list[Path] | None, typer.Option(help="An edit directory; repeat to stack edits.")] = None,
    guard: Annotated[str | None, typer.Option(help="An inference-time guard on top: negative-prompt, sld, "
                                                   "safree.")] = None,
    guard_option: Annotated[list[str] | None, typer.Option(help="A guard option KEY=VALUE over the concept it is "
                                                          "given, e.g. 'concepts=[\"star\", \"pentagram\"]'; "
                                                          "repeat.")] = None,
    suite: Annotated[str | None, typer.Option(help="The concept's prompts (tiny: the world's own suites).")] = None,
    preserve_suite: Annotated[list[str] | None, typer.Option(help="Prompts to keep (specificity); repeat.")] = None,
    judge: Annotated[str | None, typer.Option(help="Detector: tiny (default on tiny), nudenet or clip.")] = None,
    judge_option: Annotated[list[str] | None, typer.Option(help="A judge option KEY=VALUE, e.g. "
                                                          "protocol=exposed8-0.45; repeat.")] = None,
    label: Annotated[str | None, typer.Option(help="What the judge looks for (default: the concept).")] = None,
    threat_model: Annotated[str, typer.Option(help="white-box, grey-box or black-box.")] = "white-box",
    budget: Annotated[int, typer.Option(help="UNet evaluations the attacks may spend (estimated, cheapest "
                                             "first).")] = DEFAULT_BUDGET,
    text_budget: Annotated[int, typer.Option(help="Text-encoder evaluations the attacks may spend (Ring-A-Bell's "
                                                  "search is all of them).")] = DEFAULT_TEXT_BUDGET,
    seeds: Annotated[int, typer.Option(help="Seeds per prompt for erasure, generality and specificity.")] = 12,
    attack_seeds: Annotated[int, typer.Option(help="Seeds per attacked prompt.")] = 4,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    attack: Annotated[list[str] | None, typer.Option(help="Run only this attack (e.g. embedding-recovery, "
                                                           "'concept-vector[search=True]'); repeat.")] = None,
) -> None:
    """Audit an erased concept: erasure, generality, specificity and quality against the unedited model, then
    every attack the threat model allows within the budget; writes a model-card section (card.md), card.json and
    card.html. Killed, the same command resumes.

    Example: eraselab audit --model tiny --edit edits/uce-star --concept star --out audits/uce-star
    """
    from eraselab.audit.plan import AuditRequest
    from eraselab.audit.run import run_audit
    from eraselab.options import parse_key_values

    request = AuditRequest(model, concept, edits=tuple(str(e) for e in edit or ()), guard=guard,
                           guard_options=parse_key_values(guard_option or [], "--guard-option"), suite=suite,
                           preserve_suites=tuple(preserve_suite or ()), judge=judge,
                           judge_options=parse_key_values(judge_option or [], "--judge-option"), label=label,
                           threat_model=threat_model, budget=budget, text_budget=text_budget, seeds=seeds,
                           attack_seeds=attack_seeds, steps=steps, device=device, attacks=tuple(attack or ()))
    card = run_audit(request, out)
    if not card:  # not the main process of a launch
        return
    strongest = card["strongest_attack"]
    efficacy = next((g["defended"]["value"] for g in card["erasure"] if g["metric"] == "efficacy"), None)
    typer.echo(f"wrote {out / 'card.md'}, card.json, card.html: presence {efficacy}"
               + (f"; strongest attack {strongest['label']} -> {strongest['after']['value']:.3f}" if strongest
                  else "; no attack run"))


@user_errors
def leaderboard(
    cards: Annotated[list[Path], typer.Argument(help="card.json files or audit directories.")],
    out: Annotated[Path, typer.Option(help="Directory for leaderboard.md and leaderboard.html.")],
) -> None:
    """Rank audit cards made under one protocol (refusing mixed ones, naming the fields that differ).

    Example: eraselab leaderboard audits/* --out leaderboard
    """
    from eraselab.audit.leaderboard import write_leaderboard

    table = write_leaderboard(cards, out)
    typer.echo(f"wrote {out / 'leaderboard.md'} and leaderboard.html ({len(table)} rows)")
