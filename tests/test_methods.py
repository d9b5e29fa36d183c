"""RECE, TRCE (stage 1), ESD and the preservation corpus, on the shipped tiny model and micro models."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from eraselab.erase.artifact import apply_edit
from eraselab.erase.corpus import concept_phrases, corpus_statistics, load_captions
from eraselab.erase.cross_attention_edit import projections
from eraselab.erase.esd import EsdConfig, trained_parameter_names
from eraselab.erase.esd import erase as esd_erase
from eraselab.erase.rece import ReceConfig, recovered_embeddings
from eraselab.erase.rece import erase as rece_erase
from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.erase.trce import TrceConfig, key_rows, paired_rows
from eraselab.erase.trce import erase as trce_erase
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.models import load_pipeline
from eraselab.models.conditioning import encode
from eraselab.models.tiny.classifier import load_classifier
from eraselab.models.tiny.world import load_world
from eraselab.options import build
from eraselab.profile import TINY
from eraselab.requests import GenerationRequest


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def star_spec():
    return EraseSpec(("star",), ("shape",), templates=load_world().erase_templates("star"))


def _shape_rates(pipe, edit, shapes=("star", "circle")):
    world, judge = load_world(), load_classifier()
    indices = [world.shapes.index(s) for s in shapes]
    requests = [GenerationRequest(world.prompt(s, c), seed, steps=10) for s in indices for c in range(6)
                for seed in (0, 1)]
    with apply_edit(pipe, edit):
        predicted = judge.predict(generate_images(pipe, requests, progress=False))["shape"]
    return [float(np.mean(predicted[12 * k:12 * (k + 1)] == s)) for k, s in enumerate(indices)]


def test_rece_erases_the_star_keeps_the_circle_and_records_each_rounds_residual(tiny, star_spec):
    edit = rece_erase(tiny, star_spec, TINY.config(ReceConfig))
    rounds = edit.manifest["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4] and rounds[-1]["final"]
    # Each round erases what the previous edit still recovered: the recovered embedding's residual grows.
    assert rounds[-1]["recovered_residual"] > rounds[0]["recovered_residual"]
    star, circle = _shape_rates(tiny, edit)
    assert star <= 0.25 and circle >= 0.9


def test_recovered_embedding_is_the_regularised_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    original = {f"w{i}": torch.randn(6, 5, generator=g, dtype=torch.float64) for i in range(3)}
    edited = {k: v + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64) for k, v in original.items()}
    keys = torch.randn(2, 5, generator=g, dtype=torch.float64)
    found = recovered_embeddings(original, edited, keys, reg=0.01)
    # Plain re-derivation: stack the layers and solve min_c' sum_l |W_l c' - W0_l c|^2 + reg |c'|^2 by lstsq.
    stacked_w = torch.cat([edited[k] for k in original])
    stacked_w0 = torch.cat([original[k] for k in original])
    augmented = torch.cat([stacked_w, 0.1 * torch.eye(5, dtype=torch.float64)])
    for row in range(2):
        goal = torch.cat([stacked_w0 @ keys[row], torch.zeros(5, dtype=torch.float64)])
        expected = torch.linalg.lstsq(augmented, goal).solution
        assert torch.allclose(found[row], expected, atol=1e-9)


@pytest.mark.parametrize("positions", ["first-eot", "word-to-padding"])
def test_trce_maps_the_malicious_rows_to_the_safe_counterparts(tiny, star_spec, positions):
    config = replace(TINY.config(TrceConfig), positions=positions, stages="1")
    edit = trce_erase(tiny, star_spec, config)
    assert edit.manifest["method"] == "trce" and edit.manifest["config"]["lamb"] == 0.0
    pairs = star_spec.pairs()
    malicious, safe = paired_rows(tiny, [t for t, _ in pairs], [a for _, a in pairs], positions)
    encoded = encode(tiny, [pairs[0][0]])
    eot, length = encoded.first_eot[0], encoded.hidden.shape[1]
    first = key_rows(tiny, [pairs[0][0]], positions)[0]  # "a red star": [EoT], or "star", [EoT] and the padding
    expected = [eot] if positions == "first-eot" else [encoded.last_word[0], *range(eot, length)]
    assert torch.equal(first, encoded.hidden[0, expected])
    for name, w0 in projections(tiny).items():
        w = edit.tensors[name].double()
        before = (w0.double() @ malicious.T - w0.double() @ safe.T).norm()
        after = (w @ malicious.T - w0.double() @ safe.T).norm()
        assert after < 0.2 * before, name


def test_trce_needs_a_corpus_and_known_positions(tiny, star_spec):
    with pytest.raises(EraselabError, match="needs a caption corpus"):
        trce_erase(tiny, star_spec, TrceConfig())
    with pytest.raises(EraselabError, match="positions must be one of"):
        trce_erase(tiny, star_spec, TrceConfig(corpus="tiny", positions="all"))


def test_corpus_leaves_out_captions_naming_the_concept_and_is_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASELAB_CACHE", str(tmp_path))
    phrases = concept_phrases(["star"])
    assert {"star", "five-pointed shape", "pentagram"} <= set(phrases)
    captions = load_captions("tiny", phrases)
    assert captions and not any("star" in c or "pentagram" in c or "five-pointed" in c for c in captions)
    first = corpus_statistics(tiny, captions[:50])
    assert len(list((tmp_path / "corpus-stats").glob("*.safetensors"))) == 1
    again = corpus_statistics(tiny, captions[:50])
    assert torch.equal(first, again)
    hidden = encode(tiny, captions[:50]).hidden
    rows = hidden.reshape(-1, hidden.shape[-1])
    assert torch.allclose(first, rows.T @ rows / 50, atol=1e-9)
    with pytest.raises(EraselabError, match="neither 'tiny' nor a text file"):
        load_captions(str(tmp_path / "missing.txt"), [])


def test_every_method_refuses_unknown_words_and_a_self_anchor(tiny):
    for name in ("uce", "rece", "trce", "esd"):
        erase, config = ERASERS.get(name).erase, build(ERASERS, name, profile=TINY)
        with pytest.raises(EraselabError, match="does not know: zebra"):
            erase(tiny, EraseSpec(("zebra",)), config)
        if name != "esd":
            with pytest.raises(EraselabError, match="anchor of 'star' is the concept itself"):
                erase(tiny, EraseSpec(("star",), ("star",)), config)
    with pytest.raises(EraselabError, match="takes no anchor"):
        esd_erase(tiny, EraseSpec(("star",), ("shape",)), EsdConfig(iterations=1))


@pytest.mark.parametrize(("variant", "inside", "only_kv"), [("esd-x", True, False), ("esd-x-strict", True, True),
                                                             ("esd-u", False, False)])
def test_esd_variants_select_their_parameters(tiny, variant, inside, only_kv):
    names = trained_parameter_names(tiny.unet, variant)
    assert names and all((".attn2." in n) == inside for n in names)
    if only_kv:
        assert all(".to_k." in n or ".to_v." in n for n in names)
    with pytest.raises(EraselabError, match="variant must be one of"):
        trained_parameter_names(tiny.unet, "esd-all")


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler"])
def test_esd_saves_only_trained_tensors_and_resumes_bit_exactly(micro_run, tmp_path, scheduler):
    # SD-1.4 ships PNDM, which keeps state between steps: ESD must draw x_t with a stateless DDIM of its own (as the
    # ESD reference does), or each iteration would depend on the ones before it and a resumed run would differ.
    import diffusers

    pipe = load_pipeline(micro_run / "pipeline")
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    spec = EraseSpec(("star",), templates=("a {}", "a red {}"))
    config = EsdConfig(variant="esd-x-strict", iterations=4, lr=1e-3, batch_size=2, ddim_steps=4,
                       checkpoint=str(tmp_path / "a"), checkpoint_every=2)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    whole = esd_erase(pipe, spec, config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # the pipe is untouched
    assert set(whole.tensors) == {f"unet.{n}" for n in trained_parameter_names(pipe.unet, "esd-x-strict")}
    assert any(not torch.equal(whole.tensors[f"unet.{n}"], before[n]) for n in before if f"unet.{n}" in whole.tensors)
    resumed_config = EsdConfig(**{**config.__dict__, "checkpoint": str(tmp_path / "b")})
    assert esd_erase(pipe, spec, resumed_config, progress=False, stop_after=3) is None  # "killed" after step 3
    resumed = esd_erase(pipe, spec, resumed_config, progress=False)
    assert all(torch.equal(whole.tensors[k], resumed.tensors[k]) for k in whole.tensors)
    other = EsdConfig(**{**config.__dict__, "lr": 1e-4, "checkpoint": str(tmp_path / "b")})
    with pytest.raises(EraselabError, match="other settings"):
        esd_erase(pipe, spec, other, progress=False)


@pytest.mark.parametrize("method", ["rece", "trce"])
def test_closed_form_methods_erase_several_concepts_in_one_call(tiny, method):
    erase, config = ERASERS.get(method).erase, build(ERASERS, method, {"stages": "1"} if method == "trce" else {}, TINY)
    both = erase(tiny, EraseSpec(("star", "heart"), ("shape",), templates=("a {}", "a red {}")), config)
    one = erase(tiny, EraseSpec(("star",), ("shape",), templates=("a {}", "a red {}")), config)
    assert both.manifest["concepts"] == ["star", "heart"]
    name = next(iter(both.tensors))
    assert not torch.equal(both.tensors[name], one.tensors[name])


def test_esd_trains_on_every_concept(micro_run):
    pipe = load_pipeline(micro_run / "pipeline")
    config = EsdConfig(variant="esd-x-strict", iterations=2, batch_size=2, ddim_steps=3)
    both = esd_erase(pipe, EraseSpec(("star", "heart")), config, progress=False)
    one = esd_erase(pipe, EraseSpec(("star",)), config, progress=False)
    assert both.manifest["concepts"] == ["star", "heart"]
    assert any(not torch.equal(both.tensors[k], one.tensors[k]) for k in both.tensors)


def _drift(pipe, edit, prompt: str) -> float:
    """How far the edited UNet's prediction for ``prompt`` moves from the unedited one, on fixed latents."""
    g = torch.Generator().manual_seed(0)
    unet = pipe.unet
    latents = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    with torch.no_grad():
        cond = pipe.encode_prompt([prompt] * 2, pipe.device, 1, False)[0]
        before = unet(latents, 500, encoder_hidden_states=cond).sample
        with apply_edit(pipe, edit):
            after = unet(latents, 500, encoder_hidden_states=cond).sample
    return float((after - before).pow(2).mean())


def test_esd_preserve_set_adds_the_retain_term_and_is_pure_esd_without_one(micro_run):
    pipe = load_pipeline(micro_run / "pipeline")
    config = EsdConfig(variant="esd-x-strict", iterations=6, lr=3e-3, batch_size=2, ddim_steps=4,
                       preserve_weight=10.0)
    plain = esd_erase(pipe, EraseSpec(("star",), templates=("a {}",)), config, progress=False)
    kept = esd_erase(pipe, EraseSpec(("star",), preserve=("heart",), templates=("a {}",)), config, progress=False)
    assert _drift(pipe, kept, "a heart") < 0.5 * _drift(pipe, plain, "a heart")
    # preserve_weight 0 drops the term: the paper's ESD, bit for bit
    off = esd_erase(pipe, EraseSpec(("star",), preserve=("heart",), templates=("a {}",)),
                    EsdConfig(**{**config.__dict__, "preserve_weight": 0.0}), progress=False)
    assert all(torch.equal(plain.tensors[k], off.tensors[k]) for k in plain.tensors)
    with pytest.raises(EraselabError, match="preserve_weight"):
        esd_erase(pipe, EraseSpec(("star",)), EsdConfig(preserve_weight=-1.0), progress=False)


def test_the_recovered_embedding_is_solved_on_the_weights_device():
    # Found on a GPU: the attack's weights and keys lived on cuda while the solve's accumulators were made on the
    # CPU ("Expected all tensors to be on the same device"). The meta device stands in for a second device here.
    weights = {"w": torch.randn(6, 4, device="meta")}
    found = recovered_embeddings(weights, weights, torch.randn(3, 4, device="meta"), reg=0.1)
    assert found.device.type == "meta" and found.shape == (3, 4)


@pytest.mark.parametrize("method", ["esd", "safegen"])
def test_trained_erasers_refuse_half_precision_weights_whose_updates_would_round_away(micro_run, method):
    # Measured on the tiny model: 5 ESD steps at lr 1e-5 on a bfloat16 pipeline changed 14,583 of 336,576 trained
    # weights (4%); the rest of the updates rounded away, silently. The loop trains float32 weights only.
    pipe = load_pipeline(micro_run / "pipeline", dtype="bfloat16")
    config = build(ERASERS, method, {"iterations": 1}, TINY)
    with pytest.raises(EraselabError, match=r"bfloat16: most updates would round away.*--dtype float32"):
        ERASERS.get(method).erase(pipe, EraseSpec(("star",)), config, progress=False)
