"""SDXL's layout (two text encoders whose outputs are concatenated into a 2048-wide context at full size, a pooled
embedding in the time conditioning, Euler sampling) through erase, generate, run and embedding recovery, on a micro
pipeline built from config (random weights: the machinery, not quality). SD3 and FLUX are refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eraselab.batching import Batching
from eraselab.cli import app
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.models import cross_attention_layers, load_pipeline, pipeline_fingerprint
from eraselab.models.conditioning import encode_context
from eraselab.requests import GenerationRequest

runner = CliRunner()


@pytest.fixture(scope="module")
def sdxl(micro_sdxl):
    return load_pipeline(micro_sdxl)


def test_it_loads_as_sdxl_and_the_context_is_both_encoders_side_by_side(sdxl, micro_sdxl):
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline"
    assert {layer.text_dim for layer in cross_attention_layers(sdxl.unet)} == {80}  # 32 + 48
    prompts = ["a red star", "a blue heart"]
    ids, ids_2 = (t(prompts, padding="max_length", max_length=t.model_max_length, return_tensors="pt").input_ids
                  for t in (sdxl.tokenizer, sdxl.tokenizer_2))
    assert not torch.equal(ids, ids_2)  # the second pads with "!", as SDXL base's
    with torch.no_grad():
        first = sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        second = sdxl.text_encoder_2(ids_2, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(encode_context(sdxl, prompts), torch.cat([first, second], dim=-1))
    # the second encoder's weights count in the fingerprint: an edit made for another SDXL is refused
    other = load_pipeline(micro_sdxl)
    assert pipeline_fingerprint(other) == pipeline_fingerprint(sdxl)
    with torch.no_grad():
        other.text_encoder_2.text_projection.weight.add_(1e-3)
    assert pipeline_fingerprint(other) != pipeline_fingerprint(sdxl)


def test_generation_gives_plain_diffusers_pixels_with_its_pooled_conditioning(sdxl):
    request = GenerationRequest("a red star", seed=3, steps=2, guidance=5.0)
    ours = generate_images(sdxl, [request], batching=Batching(1, fixed_shape=False), progress=False)[0]
    plain = sdxl("a red star", num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
                 output_type="np").images[0]  # an empty negative prompt: zero embeddings, SDXL base's setting
    assert np.array_equal(np.asarray(ours), np.round(plain * 255).astype(np.uint8))
    padded = generate_images(sdxl, [request], progress=False)[0]  # the default policy: 8 rows, fixed slot
    assert np.abs(np.asarray(padded, dtype=int) - np.asarray(ours, dtype=int)).max() <= 1


@pytest.mark.parametrize("method", ["uce", "rece", "trce"])
def test_every_closed_form_eraser_edits_the_concatenated_context(sdxl, method):
    from eraselab.erase.registry import ERASERS
    from eraselab.options import build

    config = build(ERASERS, method, {"corpus": "tiny", "stages": "1"} if method == "trce" else {})
    edit = ERASERS.get(method).erase(sdxl, EraseSpec(("star",), ("shape",), templates=("a red {}",)), config)
    widths = {tensor.shape[-1] for tensor in edit.tensors.values()}
    assert edit.tensors and widths == {80} and edit.manifest["base_fingerprint"] == pipeline_fingerprint(sdxl)
    assert all(torch.isfinite(t).all() for t in edit.tensors.values())


def test_erase_generate_run_and_embedding_recovery_from_the_cli(micro_sdxl, micro_run, tmp_path):
    edit = tmp_path / "uce"
    result = runner.invoke(app, ["erase", "--model", str(micro_sdxl), "--method", "uce", "--concept", "star",
                                 "--anchor", "shape", "--template", "a red {}", "--out", str(edit)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", "--model", str(micro_sdxl), "--edit", str(edit), "--prompt",
                                 "a red star", "--steps", "2", "--num-images", "2", "--out", str(tmp_path / "gen"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "e.yaml"
    experiment.write_text(json.dumps({
        "models": [str(micro_sdxl)], "edits": ["base", str(edit)], "sampler": {"steps": 2}, "seeds": {"count": 1},
        "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
        "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]}))
    result = runner.invoke(app, ["run", str(experiment), "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["images"] == 12
    # Random weights draw no star; the judge is pointed at a colour the unedited model does draw, so there is
    # something to bring back and the whole attack path (one pipeline, the unedited projections) runs.
    from eraselab.judge.detectors import make_detector

    unedited = generate_images(load_pipeline(micro_sdxl), [GenerationRequest("a red star", 0, steps=2, guidance=7.5)],
                               progress=False)
    label = f"color={make_detector('tiny').detect(unedited)[0]['color']}"
    result = runner.invoke(app, ["attack", "--model", str(micro_sdxl), "--edit", str(edit), "--attack",
                                 "embedding-recovery", "--concept", "star", "--suite", "tiny:target:star",
                                 "--steps", "2", "--seeds", "1", "--judge", "tiny", "--label", label,
                                 "--out", str(tmp_path / "attack"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "attack" / "summary.json").read_text())
    assert summary["sampler"] == {"steps": 2, "guidance": 7.5} and summary["cost"]["unet_evals"] == 0
    recovered = json.loads((tmp_path / "attack" / "result.json").read_text())
    assert recovered["details"]["changed_projections"] == 16  # k and v of 8 layers, 80 wide


def test_the_trained_erasers_draw_x_t_as_the_pipeline_samples_with_its_pooled_conditioning(sdxl):
    from eraselab.models.conditioning import guidance_conditions
    from eraselab.sampling import sample_until, training_sampler

    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a red star", "a blue heart"]
    plain = type(sdxl)(**{**sdxl.components, "scheduler": training_sampler(sdxl, 3)})
    expected = plain(prompts, num_inference_steps=3, guidance_scale=2.0, latents=noise, output_type="latent").images
    cond, uncond = guidance_conditions(sdxl, prompts)
    assert uncond.pooled.abs().max() == 0 and cond.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    ours = sample_until(sdxl.unet, training_sampler(sdxl, 3), noise, cond, uncond, 2.0, 3)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not plain.scheduler.config.clip_sample  # Euler's config names none: DDIM's default would clip x_0


def _resumes_exactly_and_plain_diffusers_applies_it(erase, sdxl, spec, config, edit, micro_sdxl, readme_apply,
                                                    tmp_path, stop_after: int = 1) -> None:
    """The same run killed after ``stop_after`` steps and resumed gives ``edit`` bit for bit, and the plain SDXL
    pipeline applies it with the docs' snippet."""
    from dataclasses import replace

    from diffusers import StableDiffusionXLPipeline

    saved = replace(config, checkpoint=str(tmp_path / "ckpt"), checkpoint_every=1)
    assert erase(sdxl, spec, saved, progress=False, stop_after=stop_after) is None
    resumed = erase(sdxl, spec, saved, progress=False)
    assert set(resumed.tensors) == set(edit.tensors)
    assert all(torch.equal(edit.tensors[n], resumed.tensors[n]) for n in edit.tensors)
    edit.save(tmp_path / "edit")
    plain = StableDiffusionXLPipeline.from_pretrained(micro_sdxl)
    readme_apply(plain, tmp_path / "edit")
    assert np.isfinite(plain("a red star", num_inference_steps=2, output_type="np").images[0]).all()


def test_esd_trains_the_cross_attention_of_sdxl_and_plain_diffusers_applies_it(sdxl, micro_sdxl, readme_apply,
                                                                             tmp_path):
    from eraselab.erase.esd import EsdConfig
    from eraselab.erase.esd import erase as esd

    spec, config = EraseSpec(("star",), preserve=("circle",)), EsdConfig(iterations=3, ddim_steps=3, lr=1e-3)
    edit = esd(sdxl, spec, config, progress=False)
    assert all(".attn2." in n for n in edit.tensors)  # esd-x: q, k, v and out (weight and bias) of every attn2
    assert len(edit.tensors) == 5 * len(cross_attention_layers(sdxl.unet))
    _resumes_exactly_and_plain_diffusers_applies_it(esd, sdxl, spec, config, edit, micro_sdxl, readme_apply, tmp_path)


def test_safegen_trains_the_self_attention_of_sdxl_from_a_triplet_csv(sdxl, micro_sdxl, readme_apply, tmp_path):
    from PIL import Image

    from eraselab.erase.safegen import SafeGenConfig
    from eraselab.erase.safegen import erase as safegen

    rng = np.random.default_rng(0)
    for name in ("c", "m", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "triplets.csv").write_text("concept,mosaic,benign\nc.png,m.png,b.png\n")
    spec = EraseSpec(("star",))
    config = SafeGenConfig(iterations=3, accumulation=2, lr=1e-3, ema_decay=0.9,
                           triplets=str(tmp_path / "triplets.csv"))
    edit = safegen(sdxl, spec, config, progress=False)
    assert edit.tensors and all(".attn1." in n for n in edit.tensors)
    _resumes_exactly_and_plain_diffusers_applies_it(safegen, sdxl, spec, config, edit, micro_sdxl, readme_apply,
                                                    tmp_path, stop_after=2)


def test_trce_trains_its_second_stage_on_sdxl_over_the_first(sdxl, micro_sdxl, readme_apply, tmp_path):
    from dataclasses import replace

    from eraselab.erase.trce import TrceConfig
    from eraselab.erase.trce import erase as trce

    spec = EraseSpec(("star",), ("circle",), templates=("a red {}",))
    config = TrceConfig(corpus="tiny", sampler_steps=4, trajectories_per_pair=2, unconditional_trajectories=2,
                        epochs=2, lr=1e-2, margin=10.0)  # a margin that keeps Eq. 7's hinge active on random weights
    stage_one = trce(sdxl, spec, replace(config, stages="1"), progress=False)
    both = trce(sdxl, spec, config, progress=False)
    stage_two = set(both.tensors) - set(stage_one.tensors)
    assert all(torch.equal(both.tensors[n], t) for n, t in stage_one.tensors.items())  # stage 1's K/V, frozen
    assert stage_two and all(".attn1." in n or ".attn2.to_q." in n for n in stage_two)
    _resumes_exactly_and_plain_diffusers_applies_it(trce, sdxl, spec, config, both, micro_sdxl, readme_apply, tmp_path)


def test_advunlearn_trains_both_text_encoders_of_sdxl_and_plain_diffusers_applies_it(sdxl, micro_sdxl, readme_apply,
                                                                                     tmp_path):
    from eraselab.erase.advunlearn import AdvUnlearnConfig, pipeline_encoders, text_encoder_parameters
    from eraselab.erase.advunlearn import erase as advunlearn

    spec = EraseSpec(("star",), preserve=("circle",), templates=("a {}", "a red {}"))
    config = AdvUnlearnConfig(iterations=3, warmup=1, attack_steps=2, ddim_steps=3, retain_batch=2, lr=1e-3)
    edit = advunlearn(sdxl, spec, config, progress=False)
    assert set(edit.tensors) <= set(text_encoder_parameters(pipeline_encoders(sdxl)))
    assert {n.split(".")[0] for n in edit.tensors} == {"text_encoder", "text_encoder_2"}  # both encoders learn
    assert not any("embedding" in n or "text_projection" in n for n in edit.tensors)
    # the first encoder's last layer is not read (SDXL conditions on the penultimate states): unchanged, not in it
    assert not any(n.startswith("text_encoder.text_model.encoder.layers.1.") for n in edit.tensors)
    _resumes_exactly_and_plain_diffusers_applies_it(advunlearn, sdxl, spec, config, edit, micro_sdxl, readme_apply,
                                                    tmp_path, stop_after=2)  # past the warm-up: both prefixes saved


def test_advunlearn_conditions_its_prefixed_prompt_as_the_typed_prompt_on_sdxl(sdxl):
    from eraselab.erase.advunlearn import AdvUnlearnConfig, _Setting, pipeline_encoders
    from eraselab.models.conditioning import UNetCondition

    setting = _Setting(sdxl, pipeline_encoders(sdxl), AdvUnlearnConfig(ddim_steps=3), ["a star"], ["a red heart"])
    (word,) = sdxl.tokenizer("blue", add_special_tokens=False).input_ids
    prefix = [e.get_input_embeddings().weight[[word]][None] for e in (sdxl.text_encoder, sdxl.text_encoder_2)]

    def typed(prompt: str) -> UNetCondition:
        context, _, pooled, _ = sdxl.encode_prompt(prompt=prompt, device="cpu", do_classifier_free_guidance=False)
        return UNetCondition(context, pooled, torch.tensor([[32.0, 32, 0, 0, 32, 32]]))

    with torch.no_grad():  # a prefix of a typed word's embeddings is that word typed: pooled at the moved end token
        for ours, expected in ((setting.condition(["a star"], prefix), typed("blue a star")),
                               (setting.condition(["a red heart"]), typed("a red heart"))):
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(
                (ours.context, ours.pooled, ours.time_ids), (expected.context, expected.pooled, expected.time_ids),
                strict=True))
    assert setting.original[""].pooled.abs().max() == 0  # SDXL base's unconditional text: zeros
    found = setting.inner_attack("a star", prefix, torch.Generator().manual_seed(0))
    assert [d.shape for d in found] == [(1, 1, 32), (1, 1, 48)]
    assert all(not torch.equal(d, p) for d, p in zip(found, prefix, strict=True))


def test_concept_arithmetic_searches_compositions_on_sdxl_and_counts_each_term(sdxl):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig
    from eraselab.attack.concept_arithmetic import attack as arithmetic

    result = arithmetic(sdxl, AttackSpec("star", ("a red star",), steps=2), ConceptArithmeticConfig(
        budget=3, oracle_seeds=(1000,)))
    tried = result.details["search"][0]["tried"]
    assert 1 <= len(tried) <= 3 and result.oracle["label"] == "shape=star"
    assert result.cost.unet_evals == sum(2 * (2 + len(t["recipe"])) for t in tried)  # 1 seed x 2 steps x rows


def test_the_concept_vector_and_its_typeable_search_read_both_encoders_on_sdxl(sdxl):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.concept_vector import ConceptVectorConfig
    from eraselab.attack.concept_vector import attack as concept_vector
    from eraselab.attack.concept_vector import concept_vector as concept_vector_of
    from eraselab.models.conditioning import encode

    spec = AttackSpec("star", ("a red star",), steps=2)
    plain = concept_vector(sdxl, spec, ConceptVectorConfig())
    assert plain.replays[0].embeddings.shape == (1, sdxl.tokenizer.model_max_length, 80)  # 32 + 48 wide
    images = generate_images(sdxl, plain.replays[0].requests([0], 2, 5.0), progress=False)
    assert images[0].size == (32, 32)
    found = concept_vector(sdxl, spec, ConceptVectorConfig(search=True, tokens=3, population=8, generations=2))
    search = found.details["search"][0]
    assert len(search["text"].split()) == 3 and found.replays[0].text == search["text"]
    vector, _ = concept_vector_of(sdxl, "star", found.config["anchor"], tuple(found.config["templates"]))
    target = encode(sdxl, ["a red star"]).hidden[0] + 3.0 * vector  # Eq. 4, 80 wide
    typed = encode_context(sdxl, [search["text"]]).double()[0]  # what the found text conditions the UNet on
    assert search["distance"] == pytest.approx(float(((typed - target) ** 2).sum()), rel=1e-6)


def test_textual_inversion_learns_a_token_for_each_encoder_and_replays_its_pooled_text(sdxl, tmp_path):
    from eraselab.attack.base import AttackResult, AttackSpec
    from eraselab.attack.textual_inversion import TextualInversionConfig
    from eraselab.attack.textual_inversion import attack as inversion

    spec = AttackSpec("star", ("a red star",), steps=2)
    result = inversion(sdxl, spec, TextualInversionConfig(steps=3, image_seeds=(1000,)), reference_pipe=sdxl)
    assert len(result.details["token"]) == 32 and len(result.details["token_2"]) == 48  # one v* per encoder
    replay = result.replays[0]
    typed = sdxl.encode_prompt(prompt="a red star", device="cpu", do_classifier_free_guidance=False)
    assert replay.embeddings.shape == typed[0].shape and replay.pooled.shape == typed[2].shape
    assert not torch.allclose(replay.pooled, typed[2])  # the learnt token, not the typed word, is pooled
    loaded = AttackResult.load(result.save(tmp_path / "ti")).replays[0]
    assert torch.equal(loaded.pooled, replay.pooled) and torch.equal(loaded.embeddings, replay.embeddings)
    images = generate_images(sdxl, loaded.requests([0], 2, 5.0), progress=False)
    assert images[0].size == (32, 32)
    with pytest.raises(EraselabError, match="pooled text embeddings condition SDXL only"):
        generate_images(load_pipeline("tiny"), loaded.requests([0], 2, 5.0), progress=False)


def test_textual_inversion_with_the_typed_words_embedding_conditions_as_the_typed_prompt_on_sdxl(sdxl):
    from eraselab.attack.soft_prompt import condition_with_embeddings, token_embeddings
    from eraselab.attack.textual_inversion import concept_slot, with_token

    encoders, prompt = (sdxl.text_encoder, sdxl.text_encoder_2), "a red star on a field"
    slots = [concept_slot(tokenizer, prompt, "star") for tokenizer in (sdxl.tokenizer, sdxl.tokenizer_2)]
    (word,) = sdxl.tokenizer("star", add_special_tokens=False).input_ids
    with torch.no_grad():  # v* = the word's own embeddings: the typed prompt, its pooled text at the end token
        typed = [with_token(e, ids, slot, token_embeddings(e)[word]) for e, (ids, slot) in zip(encoders, slots,
                                                                                             strict=True)]
        context, pooled = condition_with_embeddings(encoders, [ids for ids, _ in slots], typed)
        expected, _, expected_pooled, _ = sdxl.encode_prompt(prompt=prompt, device="cpu",
                                                             do_classifier_free_guidance=False)
    assert torch.allclose(context, expected, atol=1e-5) and torch.allclose(pooled, expected_pooled, atol=1e-5)


def test_unlearndiff_relaxes_one_token_distribution_through_both_encoders_on_sdxl(sdxl):
    import torch.nn.functional as F

    from eraselab.attack.base import AttackSpec
    from eraselab.attack.soft_prompt import insert_relaxed_tokens, inserted_ids
    from eraselab.attack.unlearndiff import UnlearnDiffConfig, denoising_loss
    from eraselab.attack.unlearndiff import attack as unlearndiff
    from eraselab.sampling import prediction_target

    # One-hot relaxed tokens are typed words: the loss equals the plain one under the typed prompt's conditioning,
    # its pooled text read at the end token the inserted words moved.
    words = sdxl.tokenizer(["blue", "heart"], add_special_tokens=False).input_ids
    full = F.one_hot(torch.tensor([words[0][0], words[1][0]]), len(sdxl.tokenizer)).float()[None]
    ids = [t("a red star", padding="max_length", max_length=t.model_max_length, truncation=True,
             return_tensors="pt").input_ids for t in (sdxl.tokenizer, sdxl.tokenizer_2)]
    encoders = (sdxl.text_encoder, sdxl.text_encoder_2)
    embeddings = [insert_relaxed_tokens(e, i, full) for e, i in zip(encoders, ids, strict=True)]
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = denoising_loss(sdxl, embeddings, latent, [700, 100], noise,
                              input_ids=[inserted_ids(i, 2) for i in ids])
        context, _, pooled, _ = sdxl.encode_prompt(prompt="blue heart a red star", device="cpu",
                                                   do_classifier_free_guidance=False)
        t = torch.tensor([700, 100])
        time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)
        predicted = sdxl.unet(sdxl.scheduler.add_noise(latent.expand(2, -1, -1, -1), noise, t), t,
                              encoder_hidden_states=context.expand(2, -1, -1),
                              added_cond_kwargs={"text_embeds": pooled.expand(2, -1), "time_ids": time_ids}).sample
        plain = F.mse_loss(predicted, prediction_target(sdxl.scheduler, latent.expand(2, -1, -1, -1), noise, t))
    assert torch.allclose(loss, plain, rtol=1e-5)
    result = unlearndiff(sdxl, AttackSpec("star", ("a red star",), steps=2), UnlearnDiffConfig(
        iterations=2, check_every=2, oracle_seeds=(1000,), oracle="tiny", oracle_label="shape=star"),
        reference_pipe=sdxl)
    search = result.details["search"][0]
    assert search["text"].endswith("a red star") and len(search["loss"]) == 2


def test_an_audit_card_is_made_on_sdxl(micro_sdxl, tmp_path):
    import jsonschema

    from eraselab.audit.card import SCHEMA_PATH

    edit = tmp_path / "uce"
    made = runner.invoke(app, ["erase", "--model", str(micro_sdxl), "--method", "uce", "--concept", "star",
                               "--anchor", "shape", "--template", "a red {}", "--out", str(edit)])
    assert made.exit_code == 0, made.output
    suite = tmp_path / "stars.csv"
    suite.write_text("prompt\na red star\na blue star\n")
    attacks = [flag for name in ("textual-inversion", "concept-vector") for flag in ("--attack", name)]
    audited = runner.invoke(app, ["audit", "--model", str(micro_sdxl), "--edit", str(edit), "--concept", "star",
                                  "--suite", str(suite), "--preserve-suite", "tiny:target:circle", "--judge", "tiny",
                                  *attacks, "--seeds", "1", "--attack-seeds", "1", "--steps", "2",
                                  "--out", str(tmp_path / "audit")])
    assert audited.exit_code == 0, audited.output
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA_PATH.read_text()))
    status = {a["label"]: (a["status"], a.get("reason") or "") for a in card["attacks"]}
    # random weights never draw a star: the attacks ran their pre-attack check and found nothing to bring back
    assert all(status[a][0] == "refused" and "nothing to bring back" in status[a][1]
               for a in ("textual-inversion", "concept-vector"))
    assert [g["metric"] for g in card["erasure"]] == ["efficacy", "specificity"]


def test_p4d_projects_onto_tokens_of_both_encoders_and_conditions_as_the_typed_prompt_on_sdxl(sdxl):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.p4d import P4dConfig, _ProjectedPrompt, search_setting
    from eraselab.attack.p4d import attack as p4d
    from eraselab.guard import make_guard
    from eraselab.models.conditioning import guidance_conditions

    spec = AttackSpec("star", ("a red star",), steps=2, guidance=5.0)
    for config in (P4dConfig(free_tokens=3), P4dConfig(variant="p4d-k", every=2)):
        search = _ProjectedPrompt(search_setting(sdxl, sdxl, spec, config), "a red star", 0)
        with torch.no_grad():
            projected, typed = search.condition(), guidance_conditions(sdxl, [search.typed()])[0]
        # the projected tokens' embeddings through both encoders are the typed prompt's conditioning
        assert torch.allclose(projected.context, typed.context, atol=1e-5)
        assert torch.allclose(projected.pooled, typed.pooled, atol=1e-5)
        assert torch.equal(projected.time_ids, typed.time_ids)
    guarded = AttackSpec("star", ("a red star",), steps=2, guidance=5.0, guard=make_guard("sld", concept="star"))
    result = p4d(sdxl, guarded, P4dConfig(free_tokens=3, iterations=2, check_every=2, oracle_seeds=(1000,),
                                          oracle_label="shape=star"), reference_pipe=sdxl)
    search = result.details["search"][0]
    assert result.details["guard_in_loss"] and len(search["loss"]) == 2 and search["text"]


def test_esd_on_an_sdxl_directory_defaults_to_its_authors_sdxl_settings(micro_sdxl, micro_sd2, tmp_path):
    from eraselab.erase.esd import EsdConfig
    from eraselab.erase.registry import ERASERS
    from eraselab.options import build
    from eraselab.profile import SDXL, STABLE_DIFFUSION, TINY, profile_for

    assert (profile_for(micro_sdxl), profile_for(micro_sd2), profile_for("tiny")) == (SDXL, STABLE_DIFFUSION, TINY)
    assert build(ERASERS, "esd", {}, SDXL) == EsdConfig(iterations=200, lr=2e-4, start_guidance=2.0)
    assert build(ERASERS, "esd", {"lr": 1e-5}, SDXL).lr == 1e-5  # the user's word wins
    assert build(ERASERS, "uce", {}, SDXL) == build(ERASERS, "uce", {}, STABLE_DIFFUSION)  # only where they differ
    config = tmp_path / "esd.yaml"
    config.write_text("iterations: 2\nddim_steps: 3\n")
    made = runner.invoke(app, ["erase", "--model", str(micro_sdxl), "--method", "esd", "--concept", "star",
                               "--config", str(config), "--out", str(tmp_path / "esd")])
    assert made.exit_code == 0, made.output
    recorded = json.loads((tmp_path / "esd" / "manifest.json").read_text())["config"]
    assert (recorded["iterations"], recorded["lr"], recorded["start_guidance"]) == (2, 2e-4, 2.0)


def test_what_works_through_one_text_encoder_is_refused_on_sdxl_in_one_line(sdxl, tmp_path):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.p4d import P4dConfig
    from eraselab.attack.p4d import attack as p4d
    from eraselab.guard import make_guard

    with pytest.raises(EraselabError, match="the SAFREE guard does not support SDXL yet"):
        p4d(sdxl, AttackSpec("star", ("a red star",), steps=2, guard=make_guard("safree", concepts="star")),
            P4dConfig(iterations=1), reference_pipe=sdxl)
    with pytest.raises(EraselabError, match="the SAFREE guard does not support SDXL yet"):
        generate_images(sdxl, [GenerationRequest("a red star", 0, steps=2)], progress=False,
                        guard=make_guard("safree", concepts="star"))


def test_what_reads_one_token_through_both_encoders_refuses_tables_of_different_sizes(micro_sdxl):
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.p4d import P4dConfig, search_setting
    from eraselab.attack.unlearndiff import UnlearnDiffConfig
    from eraselab.attack.unlearndiff import attack as unlearndiff
    from eraselab.erase.advunlearn import AdvUnlearnConfig
    from eraselab.erase.advunlearn import erase as advunlearn

    pipe = load_pipeline(micro_sdxl)
    pipe.text_encoder_2.resize_token_embeddings(len(pipe.tokenizer) + 1)
    spec = AttackSpec("star", ("a red star",), steps=2)
    with pytest.raises(EraselabError, match=r"p4d projects onto tokens over one vocabulary.*300, 301"):
        search_setting(pipe, pipe, spec, P4dConfig())
    with pytest.raises(EraselabError, match="unlearndiff relaxes tokens over one vocabulary"):
        unlearndiff(pipe, spec, UnlearnDiffConfig(iterations=1), reference_pipe=pipe)
    with pytest.raises(EraselabError, match="AdvUnlearn draws its first prefix's words over one vocabulary"):
        advunlearn(pipe, EraseSpec(("star",)), AdvUnlearnConfig(iterations=1), progress=False)


def test_the_guided_loop_gives_the_sdxl_pipelines_images_bit_for_bit_at_any_size(sdxl, plain_guard):
    requests = [GenerationRequest("a red star", s, steps=3, guidance=5.0) for s in (0, 1)]
    requests += [GenerationRequest("a blue heart", 2, steps=3, guidance=5.0, height=48, width=32)]  # time ids
    plain = [np.asarray(i) for i in generate_images(sdxl, requests, progress=False)]
    looped = [np.asarray(i) for i in generate_images(sdxl, requests, progress=False, guard=plain_guard)]
    assert [a.shape for a in looped] == [(32, 32, 3)] * 2 + [(48, 32, 3)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, looped, strict=True))


def test_guards_that_run_more_conditionings_give_each_its_pooled_text_on_sdxl(sdxl):
    from eraselab.guard import make_guard
    from eraselab.guard.composition import CompositionGuard

    request = GenerationRequest("a red star", 0, steps=3, guidance=3.0, height=48, width=32)
    # a composition term equal to the prompt adds its weight to the guidance: eps(0) + (3 + 2)(eps(p) - eps(0))
    composed = generate_images(sdxl, [request], progress=False,
                               guard=CompositionGuard((("a red star", 2.0),)))[0]
    stronger = generate_images(sdxl, [replace(request, guidance=5.0)], progress=False)[0]
    assert np.abs(np.asarray(composed, dtype=int) - np.asarray(stronger, dtype=int)).max() <= 1
    unguarded = generate_images(sdxl, [request], progress=False)[0]
    guarded = generate_images(sdxl, [request], progress=False, guard=make_guard("sld", concept="star",
                                                                                 preset="max"))[0]
    assert np.asarray(guarded).shape == (48, 32, 3) and not np.array_equal(np.asarray(guarded),
                                                                           np.asarray(unguarded))


def test_sd3_and_flux_directories_are_refused_before_loading(tmp_path):
    for name in ("StableDiffusion3Pipeline", "FluxPipeline"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "model_index.json").write_text(json.dumps({"_class_name": name}))
        result = runner.invoke(app, ["erase", "--model", str(directory), "--concept", "star", "--out",
                                     str(tmp_path / "e")])
        assert result.exit_code == 2 and f"holds a {name}" in result.output and "SDXL" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
