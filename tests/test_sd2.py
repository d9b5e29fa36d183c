"""Stable Diffusion 2.x's layout (v-prediction, linear-projection transformers, per-block heads) through erase,
generate, run and the attacks, on a micro pipeline built from config (random weights: the machinery, not quality)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from eraselab.cli import app
from eraselab.models import cross_attention_layers, load_pipeline, pipeline_fingerprint

runner = CliRunner()


def test_it_loads_and_every_cross_attention_layer_is_found(micro_sd2):
    pipe = load_pipeline(micro_sd2)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    layers = cross_attention_layers(pipe.unet)
    assert len(layers) == 4 and {layer.text_dim for layer in layers} == {32}  # down 1, mid 1, up 2


def test_erase_generate_and_run_with_the_edit(micro_sd2, micro_run, tmp_path):
    edit = tmp_path / "uce"
    result = runner.invoke(app, ["erase", "--model", str(micro_sd2), "--method", "uce", "--concept", "star",
                                 "--anchor", "shape", "--template", "a red {}", "--out", str(edit)])
    assert result.exit_code == 0, result.output
    assert json.loads((edit / "manifest.json").read_text())["base_fingerprint"] == pipeline_fingerprint(
        load_pipeline(micro_sd2))
    result = runner.invoke(app, ["generate", "--model", str(micro_sd2), "--edit", str(edit), "--prompt", "a red star",
                                 "--steps", "2", "--num-images", "2", "--out", str(tmp_path / "gen"), "--json"])
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "e.yaml"
    experiment.write_text(json.dumps({
        "models": [str(micro_sd2)], "edits": ["base", str(edit)], "sampler": {"steps": 2}, "seeds": {"count": 1},
        "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
        "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]}))
    result = runner.invoke(app, ["run", str(experiment), "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["images"] == 12


def test_esd_trains_on_a_v_prediction_model(micro_sd2):
    from eraselab.erase.esd import EsdConfig
    from eraselab.erase.esd import erase as esd_erase
    from eraselab.erase.spec import EraseSpec

    pipe = load_pipeline(micro_sd2)
    edit = esd_erase(pipe, EraseSpec(("star",), templates=("a {}",)),
                     EsdConfig(variant="esd-x-strict", iterations=2, batch_size=1, ddim_steps=3, lr=1e-3),
                     progress=False)
    assert edit.tensors and torch.isfinite(edit.manifest["final_loss"] * torch.ones(1)).all()


def test_denoising_losses_compare_the_unet_with_the_velocity_on_a_v_prediction_model(micro_sd2):
    from eraselab.attack.soft_prompt import encode_with_embeddings, token_embeddings
    from eraselab.attack.unlearndiff import denoising_loss

    pipe = load_pipeline(micro_sd2)
    ids = pipe.tokenizer("a red star", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    embeddings = token_embeddings(pipe.text_encoder)[ids]
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 16, 16, generator=generator)
    noise = torch.randn(2, 4, 16, 16, generator=generator)
    timesteps = [100, 700]
    with torch.no_grad():
        loss = denoising_loss(pipe, [embeddings], latent, timesteps, noise)
        t = torch.tensor(timesteps)
        x_t = pipe.scheduler.add_noise(latent.expand(2, -1, -1, -1), noise, t)
        condition = encode_with_embeddings(pipe.text_encoder, embeddings).expand(2, -1, -1)
        predicted = pipe.unet(x_t, t, encoder_hidden_states=condition).sample
        velocity = pipe.scheduler.get_velocity(latent.expand(2, -1, -1, -1), noise, t)
    assert torch.allclose(loss, ((predicted - velocity) ** 2).mean(), rtol=1e-5)
    assert not torch.allclose(loss, ((predicted - noise) ** 2).mean(), rtol=1e-2)  # the epsilon loss differs


def test_embedding_recovery_inverts_an_edit_of_a_v_prediction_model(micro_sd2):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.embedding_recovery import EmbeddingRecoveryConfig
    from eraselab.attack.embedding_recovery import attack as recovery
    from eraselab.erase.artifact import apply_edit
    from eraselab.erase.spec import EraseSpec
    from eraselab.erase.uce import UceConfig
    from eraselab.erase.uce import erase as uce

    reference, target = load_pipeline(micro_sd2), load_pipeline(micro_sd2)
    apply_edit(target, uce(reference, EraseSpec(("star",), ("shape",), templates=("a red {}",)), UceConfig()))
    result = recovery(target, AttackSpec("star", ("a red star",), steps=2, guidance=7.5), EmbeddingRecoveryConfig(),
                      reference_pipe=reference)
    assert result.replays[0].embeddings.shape[-1] == 32 and torch.isfinite(result.replays[0].embeddings).all()


def test_an_audit_runs_on_the_sd2_architecture_with_a_named_suite_judge_and_attack(micro_sd2, tmp_path):
    import jsonschema

    from eraselab.audit.card import SCHEMA_PATH

    edit = tmp_path / "uce"
    made = runner.invoke(app, ["erase", "--model", str(micro_sd2), "--method", "uce", "--concept", "star",
                               "--anchor", "shape", "--template", "a red {}", "--out", str(edit)])
    assert made.exit_code == 0, made.output
    refused = runner.invoke(app, ["audit", "--model", str(micro_sd2), "--edit", str(edit), "--concept", "star",
                                  "--out", str(tmp_path / "no-suite")])
    assert refused.exit_code == 2 and "--suite" in refused.stderr  # no tiny-world defaults off the tiny model
    suite = tmp_path / "stars.csv"
    suite.write_text("prompt\na red star\na blue star\n")
    audited = runner.invoke(app, ["audit", "--model", str(micro_sd2), "--edit", str(edit), "--concept", "star",
                                  "--suite", str(suite), "--preserve-suite", "tiny:target:circle", "--judge", "tiny",
                                  "--attack", "embedding-recovery", "--seeds", "1", "--attack-seeds", "1",
                                  "--steps", "2", "--out", str(tmp_path / "audit")])
    assert audited.exit_code == 0, audited.output
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA_PATH.read_text()))
    assert [g["metric"] for g in card["erasure"]] == ["efficacy", "specificity"]
    recovery = next(a for a in card["attacks"] if a["label"] == "embedding-recovery")
    # random weights never draw a star, so the attack refuses rather than report a rate over nothing to recover
    assert recovery["status"] == "refused" and "nothing to bring back" in recovery["reason"]
    assert {a["status"] for a in card["attacks"] if a is not recovery} == {"not requested"}
    assert card["strongest_attack"] is None and card["protocol"]["steps"] == 2
    assert "No attack result" in (tmp_path / "audit" / "card.md").read_text()


def test_trce_trains_its_second_stage_on_a_v_prediction_model_over_the_first(micro_sd2, tmp_path):
    from eraselab.erase.spec import EraseSpec
    from eraselab.erase.trce import TrceConfig
    from eraselab.erase.trce import erase as trce

    pipe = load_pipeline(micro_sd2)
    corpus = tmp_path / "captions.txt"  # a real model's corpus is a caption file
    corpus.write_text("\n".join(f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "heart")))
    stage_one = trce(pipe, EraseSpec(("star",), ("circle",)), TrceConfig(corpus=str(corpus), stages="1"),
                     progress=False)
    config = TrceConfig(corpus=str(corpus), sampler_steps=4, trajectories_per_pair=1, unconditional_trajectories=2,
                        epochs=2, lr=1e-2, margin=10.0)  # a margin that keeps Eq. 7's hinge active on random weights
    both = trce(pipe, EraseSpec(("star",), ("circle",)), config, progress=False)
    stage_two = {n for n in both.tensors if n not in stage_one.tensors}
    assert {n for n in both.tensors if n in stage_one.tensors} == set(stage_one.tensors)  # stage 1's K/V, frozen
    assert all(torch.equal(both.tensors[n], stage_one.tensors[n]) for n in stage_one.tensors)
    assert stage_two and all(".attn1." in n or ".attn2.to_q." in n for n in stage_two)
    assert all(torch.isfinite(both.tensors[n]).all() for n in stage_two)


def test_advunlearn_trains_the_text_encoder_of_a_v_prediction_model(micro_sd2):
    from eraselab.erase.advunlearn import AdvUnlearnConfig
    from eraselab.erase.advunlearn import erase as advunlearn
    from eraselab.erase.spec import EraseSpec

    pipe = load_pipeline(micro_sd2)
    config = AdvUnlearnConfig(iterations=3, warmup=1, ddim_steps=4, attack_steps=2, retain_batch=2, lr=1e-3)
    edit = advunlearn(pipe, EraseSpec(("star",), preserve=("circle",)), config, progress=False)
    assert edit.tensors and all(n.startswith("text_encoder.") and (".layers." in n or "final_layer_norm" in n)
                                for n in edit.tensors)
    assert all(torch.isfinite(t).all() for t in edit.tensors.values())
    assert torch.isfinite(torch.tensor(edit.manifest["final_loss"]))


def test_p4d_ends_its_prompt_with_the_end_token_where_the_tokenizer_pads_with_another(micro_sd2):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.p4d import P4dConfig, _ProjectedPrompt, search_setting
    from eraselab.models.conditioning import guidance_conditions

    pipe = load_pipeline(micro_sd2)
    assert pipe.tokenizer.pad_token == "!"  # SD 2's OpenCLIP tokenizer: the prompt's end token is not its padding
    spec = AttackSpec("star", ("a red star",), steps=2, guidance=5.0)
    for config in (P4dConfig(free_tokens=3), P4dConfig(variant="p4d-k", every=2)):
        search = _ProjectedPrompt(search_setting(pipe, pipe, spec, config), "a red star", 0)
        with torch.no_grad():  # the projected tokens' embeddings condition as the typed prompt does
            projected, typed = search.condition(), guidance_conditions(pipe, [search.typed()])[0]
        assert torch.allclose(projected.context, typed.context, atol=1e-5)
