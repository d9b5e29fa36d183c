"""The ``eraselab`` command line: thin verbs over the Python API.

Errors in the user's input end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from eraselab.audit.commands import audit as audit_command
from eraselab.audit.commands import leaderboard as leaderboard_command
from eraselab.cli_support import user_errors
from eraselab.errors import EraselabError
from eraselab.experiment.commands import COMMANDS as RUN_COMMANDS
from eraselab.models.tiny.commands import tiny_app
from eraselab.traps.commands import traps_app

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="eraselab: erase concepts from text-to-image models, attack the erasure, judge the result.")
app.add_typer(tiny_app, name="tiny")
app.add_typer(traps_app, name="traps")


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one a line) or a CSV file with a ``prompt`` column."""
    if not path.is_file():
        raise EraselabError(f"prompts file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "prompt" not in (reader.fieldnames or []):
                raise EraselabError(f"{path} has no 'prompt' column (columns: {', '.join(reader.fieldnames or [])})")
            return [row["prompt"] for row in reader]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@app.command()
@user_errors
def generate(
    out: Annotated[Path, typer.Option(help="Output directory for PNGs and requests.jsonl.")],
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt; repeat for several.")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line, or CSV.")] = None,
    model: Annotated[str, typer.Option(help="'tiny', a local diffusers directory, or a hub id.")] = "tiny",
    edit: Annotated[list[Path] | None, typer.Option(
        help="An edit directory (edit.safetensors + manifest.json); repeat to stack edits that change disjoint "
             "tensors (e.g. UCE's cross-attention and SafeGen's self-attention).")] = None,
    num_images: Annotated[int, typer.Option(help="Images per prompt; image i has seed SEED + i.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the first image of each prompt.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: 25 for tiny, 50 otherwise).")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale (default: 5.0 for tiny, 7.5 otherwise).")] = None,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt for every image.")] = "",
    guard: Annotated[str | None, typer.Option(help="Inference-time guard: negative-prompt, sld or safree.")] = None,
    guard_concept: Annotated[str | None, typer.Option(help="The concept the guard steers away from.")] = None,
    guard_preset: Annotated[str | None, typer.Option(help="SLD preset: weak, medium, strong or max.")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per pipeline call; a request's image is bit-identical "
                                                 "for the same batch size, whatever the other requests.")] = 8,
    fixed_batch_shape: Annotated[bool | None, typer.Option(
        help="Pad every call to --batch-size requests, each request in its own row, so its image does not depend on "
             "the others (off: one image costs one image, and images may move by float rounding with their call). "
             "Default: on for small models on the CPU, off on accelerators and for SD-size models.")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weights' precision: float32, float16 or bfloat16.")] = "float32",
    height: Annotated[int | None, typer.Option(help="Image height in pixels (default: the model's).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width in pixels (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Generate images, deterministically per (prompt, seed, settings).

    Example: eraselab generate --prompt "a red star" --num-images 8 --seed 0 --out out/stars
    With a guard: eraselab generate --prompt "a red star" --guard sld --guard-concept star --out out/sld
    """
    prompts = list(prompt or []) + (read_prompts(prompts_file) if prompts_file else [])
    if not prompts:
        raise EraselabError("give at least one --prompt or a --prompts-file")
    if num_images < 1:
        raise EraselabError(f"--num-images must be at least 1, got {num_images}")
    from eraselab.outputs import check_writable, staged_output

    check_writable(out)  # fail before loading anything
    from eraselab.batching import Batching
    from eraselab.generate import check_requests, iter_generate
    from eraselab.models import load_pipeline
    from eraselab.outputs import write_jsonl
    from eraselab.requests import GenerationRequest

    batching = Batching(batch_size, fixed_batch_shape)  # refuses a bad size before the model loads
    from eraselab.models.loading import parse_dtype

    torch_dtype = parse_dtype(dtype)
    from eraselab.profile import profile_for

    profile = profile_for(model)
    steps = steps if steps is not None else profile.steps
    guidance = guidance if guidance is not None else profile.guidance
    pipe = load_pipeline(model, device=device, dtype=torch_dtype)
    if edit is not None:
        from eraselab.erase.artifact import apply_edits

        apply_edits(pipe, edit)
    guard_object = _guard_from_options(guard, guard_concept, guard_preset)
    requests = [GenerationRequest(p, seed + j, steps, guidance, height, width, negative_prompt=negative_prompt)
                for p in prompts for j in range(num_images)]
    check_requests(pipe, [guard_object.rewrite(r) for r in requests] if guard_object else requests)
    records: list[dict] = [{} for _ in requests]
    used = batching.resolved(pipe)
    with staged_output(out) as staging:
        for index, image in iter_generate(pipe, requests, used, progress=not as_json,
                                          guard=guard_object):
            name = f"{index:05d}.png"
            image.save(staging / name)
            records[index] = {**requests[index].to_record(), "file": name, "model": model,
                              "edit": "+".join(map(str, edit)) if edit else None,
                              "guard": guard_object.settings() if guard_object else None,
                              "batching": {"size": batching.size, "fixed_shape": used.fixed_shape},
                              "dtype": str(torch_dtype).removeprefix("torch."), "device": device}
        write_jsonl(staging / "requests.jsonl", records)
    summary = {"out": str(out), "images": len(requests), "prompts": len(prompts), "model": model}
    typer.echo(json.dumps(summary) if as_json else f"wrote {len(requests)} images to {out}")


def _method_config(registry, name: str, path: Path | None, model: str):
    """The config of the method or attack ``name``: the paper's defaults, the tiny ones on the tiny model, then
    the settings of the YAML/JSON file at ``path`` (safe_load), checked (:func:`eraselab.options.build`)."""
    from eraselab.config_files import read_yaml
    from eraselab.options import build
    from eraselab.profile import profile_for

    raw = read_yaml(path, "config file") if path is not None else {}
    if not isinstance(raw, dict | None):
        raise EraselabError(f"{path}: a config file holds a mapping of settings, got {type(raw).__name__}")
    return build(registry, name, raw or {}, profile_for(model))


@app.command()
@user_errors
def erase(
    concept: Annotated[list[str], typer.Option(help="A concept to erase; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Edit directory to write (edit.safetensors + manifest.json).")],
    method: Annotated[str, typer.Option(help="Erasure method: uce, rece, trce, esd, advunlearn or safegen.")] = "uce",
    model: Annotated[str, typer.Option(help="'tiny', a local diffusers directory, or a hub id.")] = "tiny",
    anchor: Annotated[list[str] | None, typer.Option(help="What to map to (one, or one per concept).")] = None,
    preserve: Annotated[list[str] | None, typer.Option(help="A concept to keep; repeat.")] = None,
    template: Annotated[list[str] | None, typer.Option(help="Prompt form with {}; repeat (tiny: world forms).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON with the method's settings.")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weights' precision: float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Erase concepts from a model and write a small, safe-to-load edit.

    Example: eraselab erase --model tiny --method uce --concept star --anchor shape --preserve circle --out edits/star
    """
    from eraselab.distributed import process_ranks
    from eraselab.erase.registry import ERASERS
    from eraselab.erase.spec import EraseSpec
    from eraselab.models import load_pipeline
    from eraselab.models.loading import parse_dtype
    from eraselab.outputs import check_writable, staged_output

    torch_dtype = parse_dtype(dtype)  # a bad name fails before anything loads
    settings = _method_config(ERASERS, method, config, model)
    if hasattr(settings, "check"):
        settings.check()  # e.g. TRCE's required corpus, before the model loads
    check_writable(out)
    if template is None:
        from eraselab.profile import profile_for

        template = profile_for(model).erase_templates(concept[0])
    spec = EraseSpec(tuple(concept), tuple(anchor or [""]), tuple(preserve or []), tuple(template or ["{}"]))
    checkpoint = None
    if getattr(settings, "checkpoint", "") is None:  # trained methods: progress beside the output, resumable
        import dataclasses
        import shutil

        checkpoint = out.with_name(out.name + ".checkpoint")
        settings = dataclasses.replace(settings, checkpoint=str(checkpoint))
    ranks = process_ranks(device)  # trained methods run data-parallel under torchrun / accelerate launch
    pipe = load_pipeline(model, device=ranks.device(device), dtype=torch_dtype)
    edit = ERASERS.get(method).erase(pipe, spec, settings)
    if ranks.main:  # every process holds the same weights; one writes them
        with staged_output(out) as staging:
            edit.save(staging)
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
        typer.echo(f"wrote {out} ({len(edit.tensors)} tensors, {edit.manifest['seconds']} s)")
    ranks.wait()


@app.command("safegen-data")
@user_errors
def safegen_data(
    concept_images: Annotated[Path, typer.Option(help="Folder of images showing the concept.")],
    benign_images: Annotated[Path, typer.Option(help="Folder of benign images (paired in turn).")],
    out: Annotated[Path, typer.Option(help="Folder to write mosaic/, triplets.csv and skipped.txt into.")],
    masks: Annotated[Path | None, typer.Option(help="Folder of masks, one per concept image (same file stem, "
                                                    "white = the region); default: NudeNet's boxes.")] = None,
    protocol: Annotated[str, typer.Option(help="NudeNet protocol whose classes and threshold make the region "
                                               "(unlearndiffatk, exposed8-0.6, ...).")] = "unlearndiffatk",
    block: Annotated[int, typer.Option(help="Mosaic square size in pixels.")] = 16,
) -> None:
    """Build SafeGen's (concept, mosaic, benign) triplets from folders of images: pixelate each concept image where
    NudeNet (or your mask) finds the concept and write the CSV that `--config` `triplets:` reads.

    Example: eraselab safegen-data --concept-images nude/ --benign-images coco/ --out safegen-data
    """
    from eraselab.erase.safegen_data import build_triplets

    summary = build_triplets(concept_images, benign_images, out, masks, protocol, block)
    typer.echo(f"wrote {summary.csv}: {summary.triplets} triplets"
               + (f"; {len(summary.skipped)} concept images without a region left out (skipped.txt)"
                  if summary.skipped else ""))


def _guard_from_options(name: str | None, concept: str | None, preset: str | None):
    if name is None:
        if concept or preset:
            raise EraselabError("--guard-concept and --guard-preset need --guard")
        return None
    from eraselab.guard import make_guard

    options = {k: v for k, v in (("concept", concept), ("preset", preset)) if v is not None}
    if name == "safree" and "concept" in options:  # SAFREE takes a list of concept phrases
        options["concepts"] = [options.pop("concept")]
    return make_guard(name, **options)


@app.command()
@user_errors
def attack(
    attack_name: Annotated[str, typer.Option("--attack", help="embedding-recovery, concept-vector, concept-arithmetic"
                                                               ", unlearndiff, p4d or textual-inversion.")],
    concept: Annotated[str, typer.Option(help="The concept the attack tries to bring back (its words).")],
    suite: Annotated[str, typer.Option(help="Prompts to attack: a suite name, tiny:KIND:CONCEPT or a CSV/JSONL.")],
    out: Annotated[Path, typer.Option(help="Directory for the attack result and summary.json.")],
    model: Annotated[str, typer.Option(help="'tiny', a local diffusers directory, or a hub id.")] = "tiny",
    edit: Annotated[list[Path] | None, typer.Option(
        help="The edit under attack (an edit directory); repeat to attack a stack of edits.")] = None,
    guard: Annotated[str | None, typer.Option(help="The guard under attack: negative-prompt, sld, safree.")] = None,
    guard_concept: Annotated[str | None, typer.Option(help="The concept the guard steers away from.")] = None,
    guard_preset: Annotated[str | None, typer.Option(help="SLD preset.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON with the attack's settings.")] = None,
    seeds: Annotated[int, typer.Option(help="Evaluation seeds per prompt (0..N-1).")] = 4,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: 25 for tiny, 50 otherwise).")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale (default: 5.0 for tiny, 7.5 otherwise).")] = None,
    judge: Annotated[str | None, typer.Option(help="Final judge: tiny (default on tiny) or nudenet.")] = None,
    label: Annotated[str | None, typer.Option(help="What the judge looks for (default: derived).")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weights' precision: float32, float16 or bfloat16.")] = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Attack an erased model (or a guard) and score it before and after with the pinned judge.

    Where each attack optimises (a defence stops only what passes through the part it changed: a text-encoder edit
    cannot see an attack on the conditioning): embedding-recovery: conditioning; concept-vector: conditioning
    (with search: typed-text); concept-arithmetic: guidance; unlearndiff: typed-text; p4d: typed-text;
    textual-inversion: input-embeddings.

    Example: eraselab attack --edit edits/uce-star --attack embedding-recovery --concept star
    --suite tiny:target:star --out attacks/er-uce
    """
    import json as json_module

    from eraselab.attack import ATTACKS
    from eraselab.attack.runner import check_access, run_attack
    from eraselab.outputs import staged_output

    settings = _method_config(ATTACKS, attack_name, config, model)
    defence = _guard_from_options(guard, guard_concept, guard_preset)
    check_access(attack_name, edit or (), defence)
    with staged_output(out) as staging:  # a stopped attack leaves no directory that looks like a result
        record = run_attack(attack_name, settings, concept, suite, staging, model, tuple(edit or ()), defence,
                            seeds, judge, label, device, steps=steps, guidance=guidance, dtype=dtype)
    pre, post, cost = record["pre_attack"], record["post_attack"], record["cost"]
    line = (f"{attack_name}: {record['judge']['label']} {pre['value']:.3f} -> {post['value']:.3f} "
            f"({cost['unet_evals']} UNet evals, {cost['seconds']} s); wrote {out}")
    typer.echo(json_module.dumps(record, default=str) if as_json else line)


for _command in RUN_COMMANDS:  # demo, run, judge, verify, report
    app.command()(_command)
app.command()(audit_command)
app.command()(leaderboard_command)
