"""Inference-time guards: the guided sampling loop, negative-prompt and SLD, and guards as a grid axis."""

import numpy as np
import pytest
import torch
import yaml

from eraselab.errors import EraselabError
from eraselab.experiment import run_experiment
from eraselab.experiment.parse import load_experiment
from eraselab.generate import generate_images
from eraselab.guard import make_guard
from eraselab.guard.sld import PRESETS, SldRule
from eraselab.models import load_pipeline, pipeline_fingerprint
from eraselab.models.conditioning import UNetCondition
from eraselab.report import write_report
from eraselab.requests import GenerationRequest
from eraselab.store import RunStore


@pytest.fixture(scope="module")
def micro(micro_run):
    return load_pipeline(micro_run / "pipeline")


def _arrays(images):
    return [np.asarray(i) for i in images]


def test_guided_loop_with_plain_guidance_gives_the_pipelines_images_bit_for_bit(micro, plain_guard):
    requests = [GenerationRequest(p, s, steps=4) for p in ("a red star", "a circle") for s in (0, 1, 2)]
    plain = _arrays(generate_images(micro, requests, progress=False))
    looped = _arrays(generate_images(micro, requests, progress=False, guard=plain_guard))
    assert all(np.array_equal(a, b) for a, b in zip(plain, looped, strict=True))


def test_negative_prompt_guard_equals_asking_for_the_negative_prompt(micro):
    guard = make_guard("negative-prompt", concept="star")
    requests = [GenerationRequest("a red star", s, steps=4) for s in (0, 1)]
    guarded = _arrays(generate_images(micro, requests, progress=False, guard=guard))
    direct = _arrays(generate_images(micro, [GenerationRequest("a red star", s, steps=4, negative_prompt="star")
                                             for s in (0, 1)], progress=False))
    assert all(np.array_equal(a, b) for a, b in zip(guarded, direct, strict=True))
    assert guard.rewrite(GenerationRequest("x", 0, negative_prompt="blur")).negative_prompt == "blur, star"


def test_sld_rule_follows_the_papers_equations():
    g = torch.Generator().manual_seed(0)
    uncond, text, safety = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    preset = PRESETS["strong"]
    rule = SldRule(UNetCondition(torch.zeros(1, 2, 2)), **preset)
    rule.extra_embeddings(2)
    momentum = torch.zeros_like(text)
    for step in range(10):
        got = rule.combine(step, uncond, text, [safety], 7.5)
        # Plain re-derivation of Eq. 3-8, element by element through numpy.
        diff = (text - safety).numpy()
        mu = np.where(diff >= preset["threshold"], 0.0, np.minimum(np.abs(diff) * preset["guidance_scale"], 1.0))
        gamma = mu * (safety - uncond).numpy() + preset["momentum_scale"] * momentum.numpy()
        momentum = torch.from_numpy(preset["mom_beta"] * momentum.numpy() + (1 - preset["mom_beta"]) * gamma)
        guidance = (text - uncond).numpy() - (gamma if step >= preset["warmup_steps"] else 0)
        expected = uncond.numpy() + 7.5 * guidance
        assert np.allclose(got.numpy(), expected, atol=1e-5), step


def test_sld_changes_the_images_and_leaves_the_pipe_as_it_was(micro):
    before = pipeline_fingerprint(micro)
    requests = [GenerationRequest("a red star", s, steps=4) for s in (0, 1)]
    plain = _arrays(generate_images(micro, requests, progress=False))
    guarded = _arrays(generate_images(micro, requests, progress=False,
                                      guard=make_guard("sld", concept="star", preset="max")))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, guarded, strict=True))
    assert pipeline_fingerprint(micro) == before
    again = _arrays(generate_images(micro, requests, progress=False))
    assert all(np.array_equal(a, b) for a, b in zip(plain, again, strict=True))


def test_bad_guards_are_refused(micro):
    with pytest.raises(EraselabError, match="did you mean 'sld'"):
        make_guard("sdl")
    with pytest.raises(EraselabError, match="preset must be one of"):
        make_guard("sld", preset="extreme")
    with pytest.raises(EraselabError, match="has no option 'strength'"):
        make_guard("sld", strength=2)
    with pytest.raises(EraselabError, match="outside the model's vocabulary: zebra"):
        generate_images(micro, [GenerationRequest("a star", 0, steps=2)], progress=False,
                        guard=make_guard("sld", concept="zebra"))


def test_guards_are_a_grid_axis_recorded_like_edits(tmp_path, micro_run):
    config = {
        "name": "guards", "models": [str(micro_run / "pipeline")], "edits": ["base"],
        "guards": [{"name": "negative-prompt", "concept": "star"}, {"name": "sld", "concept": "star"}],
        "seeds": {"start": 0, "count": 2}, "sampler": {"steps": 2, "guidance": 5.0},
        "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
        "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    assert summary["counts"]["images"] == 3 * 6 * 2
    metrics = RunStore(tmp_path / "run").metrics()
    edits = {m["inputs"]["edit"] for m in metrics if m["name"] == "efficacy"}
    assert edits == {"base", "base+negative-prompt(star)", "base+sld-medium(star)"}
    sld = next(m for m in metrics if m["name"] == "efficacy" and m["inputs"]["edit"].endswith("sld-medium(star)"))
    assert sld["inputs"]["guard"]["guidance_scale"] == 1000.0
    assert {m["inputs"]["edit"] for m in metrics if m["name"] == "presence_change"} == edits - {"base"}
    report, _ = write_report(tmp_path / "run")
    assert "base+sld-medium(star)" in report.read_text()
    path.write_text(yaml.safe_dump({**config, "guards": [{"name": "sld", "preset": "huge"}]}))
    with pytest.raises(EraselabError, match=r"guards\[0\]"):
        load_experiment(path)


def test_safree_projects_the_concepts_trigger_tokens_and_validates_itself():
    from eraselab.models.tiny.world import load_world

    tiny = load_pipeline("tiny")
    guard = make_guard("safree", concepts=["star", "five-pointed shape", "pentagram"])
    rule = guard.guidance_rule(tiny)
    prompts = ["a red star", "a red circle"]
    with torch.no_grad():
        positive, negative = tiny.encode_prompt(prompts, "cpu", 1, True)
    rule.start(tiny, prompts, positive, negative)
    star_position = 3  # [BOS, a, red, star, EoT]
    assert star_position in rule.triggers[0]
    assert rule.last_step[0] > rule.last_step[1]  # the filter keeps the projection longer on the star prompt
    projected, _ = rule.embeddings(0, positive, negative)
    assert not torch.equal(projected[0, star_position], positive[0, star_position])
    assert torch.equal(projected[0, 2], positive[0, 2]) or 2 in rule.triggers[0]
    late, _ = rule.embeddings(max(rule.last_step) + 1, positive, negative)
    assert torch.equal(late, positive)  # after the filter's window, the original embeddings
    # End to end: the guarded model draws far fewer stars, draws circles as before, and FreeU is off afterwards.
    world = load_world()
    requests = [GenerationRequest(world.prompt(world.shapes.index(s), c), seed, steps=10) for s in ("star", "circle")
                for c in (0, 4) for seed in (0, 1)]
    from eraselab.models.tiny.classifier import load_classifier

    shapes = load_classifier().predict(generate_images(tiny, requests, progress=False, guard=guard))["shape"]
    assert np.mean(shapes[:4] == world.shapes.index("star")) <= 0.5
    assert np.all(shapes[4:] == world.shapes.index("circle"))
    assert all(getattr(block, "s1", None) is None for block in tiny.unet.up_blocks)
    assert guard.rewrite(GenerationRequest("x", 0)).negative_prompt == "star, five-pointed shape, pentagram"
