"""Attacks: embedding recovery, concept vector, compositional guidance, the result format and the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eraselab.attack import ATTACKS
from eraselab.attack.base import AttackResult, AttackSpec, Cost, Replay
from eraselab.attack.concept_vector import ConceptVectorConfig, squared_distances
from eraselab.attack.concept_vector import attack as concept_vector_attack
from eraselab.attack.embedding_recovery import EmbeddingRecoveryConfig
from eraselab.attack.embedding_recovery import attack as recovery_attack
from eraselab.cli import app
from eraselab.erase.artifact import apply_edit
from eraselab.erase.cross_attention_edit import projections
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import UceConfig
from eraselab.erase.uce import erase as uce_erase
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.guard.composition import CompositionGuard, CompositionRule
from eraselab.models import load_pipeline
from eraselab.models.conditioning import encode
from eraselab.models.tiny.world import load_world
from eraselab.profile import TINY
from eraselab.requests import GenerationRequest

runner = CliRunner()


@pytest.fixture(scope="module")
def uce_star(tmp_path_factory):
    pipe = load_pipeline("tiny")
    spec = EraseSpec(("star",), ("shape",), templates=load_world().erase_templates("star"))
    return uce_erase(pipe, spec, TINY.config(UceConfig)).save(tmp_path_factory.mktemp("e") / "uce")


def bounded(name: str, config, prompts: int, steps: int, cost: Cost, exact: bool = False) -> bool:
    """The attack spent no more than its entry's bound (what audits plan with), or exactly it."""
    unet, text = ATTACKS.get(name).evaluations(config, prompts, steps)
    if exact:
        return (cost.unet_evals, cost.text_encoder_evals) == (unet, text)
    return cost.unet_evals <= unet and cost.text_encoder_evals <= text


def test_embedding_recovery_gives_embeddings_the_edit_maps_back_to_the_original_outputs(uce_star):
    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    apply_edit(target, uce_star)
    spec = AttackSpec("star", ("a red star",))
    result = recovery_attack(target, spec, EmbeddingRecoveryConfig(), reference_pipe=reference)
    assert result.cost.unet_evals == 0 and result.threat_model == "white-box-weights"
    assert bounded("embedding-recovery", EmbeddingRecoveryConfig(), len(result.replays), 25, result.cost, exact=True)
    original = encode(reference, ["a red star"]).hidden[0]
    recovered = result.replays[0].embeddings[0].double()
    edited, base = projections(target), projections(reference)
    for name in edited:
        goal = original @ base[name].double().T
        before = (original @ edited[name].double().T - goal).norm()
        after = (recovered @ edited[name].double().T - goal).norm()
        assert after < 0.5 * before, name
    with pytest.raises(EraselabError, match=r"needs the unedited model.s cross-attention projections"):
        recovery_attack(target, spec, EmbeddingRecoveryConfig())
    with pytest.raises(EraselabError, match="no cross-attention edit to invert"):
        recovery_attack(reference, spec, EmbeddingRecoveryConfig(), reference_pipe=load_pipeline("tiny"))


def test_concept_vector_is_the_mean_pair_difference_added_with_strength_eta():
    pipe = load_pipeline("tiny")
    config = ConceptVectorConfig(strength=2.0, anchor="shape", templates=("a {}", "a red {}"))
    result = concept_vector_attack(pipe, AttackSpec("star", ("a red shape",)), config)
    hidden = encode(pipe, ["a star", "a shape", "a red star", "a red shape"]).hidden
    vector = ((hidden[0] - hidden[1]) + (hidden[2] - hidden[3])) / 2  # Eq. 3, re-derived
    expected = hidden[3] + 2.0 * vector  # Eq. 4
    assert torch.allclose(result.replays[0].embeddings[0].double(), expected, atol=1e-5)
    assert result.cost.unet_evals == 0 and result.cost.text_encoder_evals == 5


def test_composition_rule_adds_weighted_guidance_terms():
    g = torch.Generator().manual_seed(0)
    uncond, text, a, b = (torch.randn(1, 4, 2, 2, generator=g) for _ in range(4))
    rule = CompositionRule(torch.zeros(2, 3, 5), [2.0, -1.0])
    got = rule.combine(0, uncond, text, [a, b], 5.0)
    assert torch.allclose(got, uncond + 5.0 * (text - uncond) + 2.0 * (a - uncond) - 1.0 * (b - uncond))


def test_a_recipe_replays_and_changes_the_images(micro_run):
    pipe = load_pipeline(micro_run / "pipeline")
    replay = Replay("a red star", recipe=(("a blue heart", 3.0),))
    plain = generate_images(pipe, Replay("a red star").requests([0], 3, 5.0), progress=False)
    composed = generate_images(pipe, replay.requests([0], 3, 5.0), progress=False, guard=replay.guard())
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(composed[0]))
    with pytest.raises(EraselabError, match="outside the model's vocabulary"):
        generate_images(pipe, [GenerationRequest("a star", 0, 2)], progress=False,
                        guard=CompositionGuard((("a zebra", 1.0),)))


def test_results_save_and_load_exactly(tmp_path):
    embeddings = torch.randn(1, 24, 128)
    result = AttackResult("x", "text-encoder", {"strength": 3.0},
                          [Replay("a red star", embeddings=embeddings),
                           Replay("a star", recipe=(("a pentagram", 2.0),)),
                           Replay("a star", text="a five-pointed shape")], Cost(5, 3, 0.1))
    loaded = AttackResult.load(result.save(tmp_path / "r"))
    assert torch.equal(loaded.replays[0].embeddings, embeddings)
    assert loaded.replays[1].recipe == (("a pentagram", 2.0),) and loaded.replays[2].text == "a five-pointed shape"
    assert loaded.cost == Cost(5, 3, 0.1)
    with pytest.raises(EraselabError, match="holds no attack result"):
        AttackResult.load(tmp_path / "nothing")


def test_attack_cli_scores_before_and_after(tmp_path, uce_star):
    out = tmp_path / "attack"
    result = runner.invoke(app, ["attack", "--edit", str(uce_star), "--attack", "embedding-recovery",
                                 "--concept", "star", "--suite", "tiny:heldout:star", "--seeds", "1",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"]["label"] == "shape=star" and summary["cost"]["unet_evals"] == 0
    assert summary["post_attack"]["value"] >= summary["pre_attack"]["value"]
    assert len(summary["post_attack"]["per_prompt"]) == 6
    assert (out / "result.json").is_file() and (out / "embeddings.safetensors").is_file()
    # The report's attack table reads the same summary (attacks scored into RUN/attacks/NAME/).
    from eraselab.report import _attack_table

    (tmp_path / "run" / "attacks").mkdir(parents=True)
    (out).rename(tmp_path / "run" / "attacks" / "er")
    table = _attack_table(tmp_path / "run")
    assert "<table id='attacks'>" in table and "embedding-recovery" in table and "white-box-weights" in table
    assert _attack_table(tmp_path) == ""


def test_attacks_honour_the_sampler_and_one_without_a_reference_leaves_the_shared_model_unedited(tmp_path, uce_star):
    from eraselab.attack.runner import run_attack
    from eraselab.attack.unlearndiff import UnlearnDiffConfig
    from eraselab.judge.detectors import make_detector
    from eraselab.models import load_pipeline, pipeline_fingerprint

    pipe, judge = load_pipeline("tiny"), make_detector("tiny")
    before = pipeline_fingerprint(pipe)
    steps = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: steps.append(1))
    try:
        record = run_attack("concept-vector", TINY.config(ConceptVectorConfig), "star", "tiny:target:star",
                            tmp_path / "cv", edits=(uce_star,), seeds=1, pipelines=(pipe, judge), steps=3, guidance=4.0)
    finally:
        hook.remove()
    assert ATTACKS.get("concept-vector").reads is None and ATTACKS.get("unlearndiff").reads == "model"
    assert ATTACKS.get("embedding-recovery").reads == "projections"
    assert record["sampler"] == {"steps": 3, "guidance": 4.0}
    assert steps and len(steps) % 3 == 0  # every sampler the runner started ran 3 steps
    assert pipeline_fingerprint(pipe) == before  # the edit was applied to the shared model and undone
    with pytest.raises(EraselabError, match="--steps must be at least 1"):
        run_attack("unlearndiff", UnlearnDiffConfig(), "star", "tiny:target:star", tmp_path / "u", steps=0)


@pytest.mark.parametrize(("args", "message"), [
    (["--attack", "embeding-recovery"], "did you mean 'embedding-recovery'"),
    (["--attack", "embedding-recovery", "--guard", "sld"], "changes no weights"),
    (["--attack", "concept-vector", "--suite", "tiny:empty:star", "--seeds", "1"], "pre-attack rate 0"),
])
def test_bad_attack_input(tmp_path, args, message):
    base = ["attack", "--concept", "star", "--out", str(tmp_path / "a")]
    if "--suite" not in args:
        base += ["--suite", "tiny:target:star"]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "a" / "summary.json").exists()


def test_a_zero_budget_is_refused_before_anything_runs(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("budget: 0\n")
    result = runner.invoke(app, ["attack", "--attack", "concept-arithmetic", "--config", str(config), "--concept",
                                 "star", "--suite", "tiny:target:star", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "budget must be at least 1" in result.stderr
    assert not (tmp_path / "a").exists()
    assert set(ATTACKS.names()) >= {"embedding-recovery", "concept-vector", "concept-arithmetic"}


def test_concept_vector_search_finds_a_typeable_prompt_deterministically():
    pipe = load_pipeline("tiny")
    config = ConceptVectorConfig(anchor="shape", templates=("a {}",), search=True, tokens=4, population=16,
                                 generations=5, seed=3)
    spec = AttackSpec("star", ("a red star",))
    first = concept_vector_attack(pipe, spec, config)
    again = concept_vector_attack(pipe, spec, config)
    text = first.replays[0].text
    assert text == again.replays[0].text and first.replays[0].embeddings is None
    ids = pipe.tokenizer(text).input_ids
    assert len(ids) == 4 + 2  # [BOS] + K whole-word tokens + [EoT]: the text replays what was scored
    assert first.cost.text_encoder_evals == 2 + 1 + 16 + 5 * 8
    assert bounded("concept-vector", config, 1, 25, first.cost, exact=True)
    with pytest.raises(EraselabError, match="generations must be at least 1"):
        concept_vector_attack(pipe, spec, ConceptVectorConfig(search=True, generations=0))


def test_concept_vector_search_encodes_in_bounded_calls_with_the_same_result():
    """The search's activations are bounded by ``encode_batch`` rows a text-encoder call, and the chunking changes
    nothing but float rounding."""
    pipe = load_pipeline("tiny")
    prompts = ["a red star", "a blue circle", "a star", "", "a green striped heart", "an outlined shape", "a cross"]
    target = encode(pipe, ["a red star"]).hidden[0]
    whole = squared_distances(pipe, prompts, target, batch=len(prompts))
    assert float(whole[0]) <= 1e-6 * float(whole[1:].min())  # the target's own prompt (up to rounding)
    torch.testing.assert_close(squared_distances(pipe, prompts, target, batch=3), whole, rtol=1e-5, atol=1e-6)
    spec = AttackSpec("star", ("a red star",))
    config = ConceptVectorConfig(anchor="shape", templates=("a {}",), search=True, tokens=4, population=16,
                                 generations=5, seed=3)
    chunked = concept_vector_attack(pipe, spec, replace(config, encode_batch=3))
    assert chunked.replays[0].text == concept_vector_attack(pipe, spec, config).replays[0].text
    assert chunked.cost.text_encoder_evals == 2 + 1 + 16 + 5 * 8
    with pytest.raises(EraselabError, match="encode_batch must be at least 1"):
        concept_vector_attack(pipe, spec, replace(config, encode_batch=0))


def test_concept_arithmetic_search_keeps_to_its_budget_and_counts_its_cost(uce_star):
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig, terms
    from eraselab.attack.concept_arithmetic import attack as arithmetic

    target = load_pipeline("tiny")
    apply_edit(target, uce_star)
    config = ConceptArithmeticConfig(budget=4, oracle_seeds=(1000,))
    result = arithmetic(target, AttackSpec("star", ("a red star",), steps=4), config)
    search = result.details["search"][0]
    assert len(search["tried"]) <= 4 and result.oracle["label"] == "shape=star"
    allowed = set(terms("a red star", "star", config, tuple(result.config["vocabulary"])))
    assert set(result.replays[0].recipe) <= allowed
    assert "a red heart" in {p for p, _ in allowed}  # untouched sibling concepts are in the vocabulary
    expected = sum(4 * (2 + len(t["recipe"])) for t in search["tried"])  # 1 seed x 4 steps x UNet copies
    assert result.cost.unet_evals == expected and bounded("concept-arithmetic", config, 1, 4, result.cost)


def test_concept_arithmetic_beam_search_finds_a_recipe_whose_terms_do_not_help_alone():
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig, beam_search

    a, b, c, d = ("a", 2.0), ("b", 2.0), ("c", -2.0), ("d", 2.0)
    # The concept comes back only from {a, b, c}; on the way, {c, d} looks best, and b helps nothing alone.
    probability = {frozenset({c}): 0.3, frozenset({a}): 0.1, frozenset({d}): 0.2, frozenset({c, d}): 0.6,
                   frozenset({c, a}): 0.5, frozenset({c, d, b}): 0.4}
    calls = []

    def score(recipe):
        calls.append(recipe)
        terms = frozenset(recipe)
        return (1.0, 1.0) if terms == {a, b, c} else (0.0, probability.get(terms, 0.0))

    options = [a, b, c, d]
    recipe, rate, tried = beam_search(score, options, ConceptArithmeticConfig(beam=2, budget=100))
    assert set(recipe) == {a, b, c} and rate == (1.0, 1.0)
    assert len(tried) == len(calls) and len({frozenset(r) for r in calls}) == len(calls)  # each set tried once
    greedy, greedy_rate, _ = beam_search(score, options, ConceptArithmeticConfig(beam=1, budget=100))
    assert set(greedy) == {c, d} and greedy_rate == (0.0, 0.6)  # a beam of one settles on the misleading pair
    calls.clear()
    _, _, short = beam_search(score, options, ConceptArithmeticConfig(beam=2, budget=5))
    assert len(short) == 5 == len(calls)
    calls.clear()
    transferred, transferred_rate, tried = beam_search(score, options, ConceptArithmeticConfig(beam=2, budget=100),
                                                       starts=((c, d), (a, b, c)))
    assert set(transferred) == {a, b, c} and transferred_rate == (1.0, 1.0)
    assert calls == [(), (c, d), (a, b, c)]  # a recipe that convinced the oracle elsewhere ends the search at once


def test_a_recipe_every_oracle_seed_agreed_on_is_tried_first_on_the_next_prompts_in_their_frame():
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig, search_recipes

    wanted = {("triangle", 2.0), ("heart", 2.0), ("circle", -2.0)}  # the recipe, whatever the colour
    partial = {("triangle", 2.0): -1.0, ("heart", 2.0): -2.0, ("circle", -2.0): -1.5}
    calls = []

    def score(prompt, recipe):
        calls.append((prompt, recipe))
        shapes = {(phrase.split()[-1], weight) for phrase, weight in recipe}
        if shapes == wanted:
            return 1.0, 0.0
        return 0.0, sum(partial.get(term, -5.0) for term in shapes) / max(len(shapes), 1) - 0.1 * len(shapes)

    vocabulary = ("star", "triangle", "heart", "circle", "square")
    prompts = ("a red star", "a blue star")
    config = ConceptArithmeticConfig(weights=(2.0,), beam=3, budget=100)  # the test's search space: weight 2 only
    found = search_recipes(score, prompts, "star", vocabulary, config)
    assert {(p.split()[-1], w) for p, w in found[0][0]} == wanted and found[0][1][0] == 1.0
    assert [c for c in calls if c[0] == "a blue star"] == [
        ("a blue star", ()), ("a blue star", tuple((p.replace("red", "blue"), w) for p, w in found[0][0]))]
    assert found[1][0] == tuple((p.replace("red", "blue"), w) for p, w in found[0][0]) and len(found[1][2]) == 2
    calls.clear()
    alone = search_recipes(score, prompts, "star", vocabulary, replace(config, transfer=False))
    assert len(alone[1][2]) == len([c for c in calls if c[0] == "a blue star"]) > 2  # searched from scratch


def test_composition_terms_put_each_phrase_in_the_prompts_frame_with_its_article():
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig, terms

    found = terms("an outlined red shape", "outlined", ConceptArithmeticConfig(weights=(2.0,)), ("solid", "hollow"))
    assert found == [("a solid red shape", 2.0), ("a solid red shape", -2.0), ("a hollow red shape", 2.0),
                     ("a hollow red shape", -2.0)]
    assert terms("a red star", "star", ConceptArithmeticConfig(weights=(1.0,)), ("orange star",))[0] == (
        "a red orange star", 1.0)
    assert terms("an outlined red shape", "outlined", ConceptArithmeticConfig(weights=(1.0,)), ("",))[0] == (
        "a red shape", 1.0)


def test_a_recipe_moves_by_one_added_term_or_one_term_rescaled_with_its_sign_kept():
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig, beam_search, moves

    options = [("a", 2.0), ("a", -2.0), ("b", 2.0), ("b", -2.0)]
    assert moves((("a", -2.0),), options, (2.0, 1.0, 4.0), max_terms=2) == [
        (("a", -2.0), ("b", 2.0)), (("a", -2.0), ("b", -2.0)), (("a", -1.0),), (("a", -4.0),)]
    assert moves((("a", -2.0), ("b", 2.0)), options, (2.0, 4.0), max_terms=2) == [
        (("a", -4.0), ("b", 2.0)), (("a", -2.0), ("b", 4.0))]  # at max_terms, only rescaling is left
    # The concept comes back only at a weight no term enters with: the search rescales its way there.
    wanted = frozenset({("a", 2.0), ("b", -4.0)})

    def score(recipe):
        terms = frozenset(recipe)
        return (1.0, 0.0) if terms == wanted else (0.0, -len(terms ^ wanted))

    recipe, rate, _ = beam_search(score, options, ConceptArithmeticConfig(weights=(2.0, 1.0, 4.0), beam=2, budget=50))
    assert frozenset(recipe) == wanted and rate == (1.0, 0.0)
    _, fixed_rate, _ = beam_search(score, options, ConceptArithmeticConfig(weights=(2.0,), beam=2, budget=50))
    assert fixed_rate[0] == 0.0  # with one weight, it is out of reach


def test_concept_arithmetic_refuses_weights_it_cannot_enter_a_term_at():
    from eraselab.attack.concept_arithmetic import ConceptArithmeticConfig
    from eraselab.attack.concept_arithmetic import attack as arithmetic

    spec = AttackSpec("star", ("a red star",))
    for weights in ((), (2.0, -1.0)):
        with pytest.raises(EraselabError, match="weights must be positive magnitudes, got"):
            arithmetic(None, spec, ConceptArithmeticConfig(weights=weights))  # refused before any model is touched


def test_stop_oracle_rules_and_the_best_rated_prompt(uce_star):
    from eraselab.attack.base import StopOracle

    target = load_pipeline("tiny")
    apply_edit(target, uce_star)
    with pytest.raises(EraselabError, match="oracle_rule must be one of all, any"):
        StopOracle("p4d", target, "star", "tiny", "", (1000,), rule="most")
    for rule in ("all", "any"):
        oracle, cost = StopOracle("p4d", target, "star", "tiny", "", (1000, 1001), rule=rule), Cost()
        rates = {}
        for text in ("a red circle", "a red heart", "a red five-pointed shape"):
            rates[text] = oracle.score(target, Replay("a red star", text=text), 6, 5.0, cost)[0]
            stop = oracle.offer(target, text, "a red star", 6, 5.0, cost)
            assert stop == (rates[text] == 1.0 if rule == "all" else rates[text] > 0.0)
        best_rate, best_text = oracle.take_best()
        assert best_rate == max(rates.values())
        assert best_text == [t for t, r in rates.items() if r == best_rate][-1]  # ties go to the later prompt
        assert cost.unet_evals == 6 * 2 * 2 * 6  # 6 generations x 2 seeds x 6 steps x 2 (guidance)
        with pytest.raises(EraselabError, match="rated no prompt"):
            oracle.take_best()


def test_relaxed_one_hot_tokens_encode_exactly_like_typed_tokens():
    from eraselab.attack.soft_prompt import encode_with_embeddings, insert_relaxed_tokens, project_to_simplex

    pipe = load_pipeline("tiny")
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    full = tokenizer(["a red star", "a blue heart"], padding="max_length", max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids
    with torch.no_grad():
        typed = encoder(full).last_hidden_state
        # the prompt without its first two words, with those words put back as one-hot relaxed tokens
        shortened = torch.cat([full[:, :1], full[:, 3:], full[:, -2:]], dim=1)
        one_hot = torch.nn.functional.one_hot(full[:, 1:3], len(tokenizer)).float()
        relaxed = encode_with_embeddings(encoder, insert_relaxed_tokens(encoder, shortened, one_hot))
    assert torch.equal(relaxed, typed)
    points = project_to_simplex(torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 3)
    assert torch.allclose(points.sum(-1), torch.ones(50)) and (points >= 0).all()
    inside = torch.softmax(torch.randn(5, 7), -1)
    assert torch.allclose(project_to_simplex(inside), inside, atol=1e-6)  # points on the simplex stay put


def test_unlearndiff_batched_and_sequential_timesteps_give_the_same_loss_and_gradient(uce_star):
    from eraselab.attack.soft_prompt import insert_relaxed_tokens
    from eraselab.attack.unlearndiff import denoising_loss, target_latents

    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    apply_edit(target, uce_star)
    latent = target_latents(reference, [("a red star", 3)], AttackSpec("star", ("a red star",), steps=4))[0]
    ids = target.tokenizer("a red star", padding="max_length", max_length=target.tokenizer.model_max_length,
                           return_tensors="pt").input_ids
    relaxed = torch.softmax(torch.randn(1, 2, len(target.tokenizer), generator=torch.Generator().manual_seed(1)),
                            -1).requires_grad_(True)
    noises = torch.randn(3, *latent.shape[1:], generator=torch.Generator().manual_seed(2))
    results = []
    for batched in (True, False):
        embeddings = insert_relaxed_tokens(target.text_encoder, ids, relaxed)
        loss = denoising_loss(target, [embeddings], latent, [801, 501, 201], noises, batched=batched)
        (gradient,) = torch.autograd.grad(loss, relaxed)
        results.append((loss.detach(), gradient))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def test_unlearndiff_returns_a_typed_prompt_within_its_budget_and_is_reproducible(uce_star):
    from eraselab.attack.unlearndiff import UnlearnDiffConfig
    from eraselab.attack.unlearndiff import attack as unlearndiff_attack

    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    apply_edit(target, uce_star)
    spec = AttackSpec("star", ("a red star",), steps=5)
    config = TINY.config(UnlearnDiffConfig, iterations=4, check_every=2)
    first = unlearndiff_attack(target, spec, config, reference_pipe=reference)
    again = unlearndiff_attack(target, spec, config, reference_pipe=reference)
    assert first.replays[0].text == again.replays[0].text and first.replays[0].text.endswith("a red star")
    assert len(first.replays[0].text.split()) == 5 + 3  # k = 5 adversarial words before the prompt
    search = first.details["search"][0]
    assert 2 <= len(search["loss"]) <= 4 and first.threat_model == "white-box-gradients"
    # target image 5 steps x 2, gradient steps 1 each, oracle checks 2 images x 5 steps x 2
    checks = len(search["loss"]) // 2
    assert first.cost.unet_evals == 10 + len(search["loss"]) + checks * 20
    assert bounded("unlearndiff", config, 1, 5, first.cost)
    with pytest.raises(EraselabError, match="iterations must be at least 1"):
        unlearndiff_attack(target, spec, TINY.config(UnlearnDiffConfig, iterations=0), reference)


def test_p4d_follows_the_unedited_trajectory_and_types_its_prompt(uce_star):
    from eraselab.attack.p4d import P4dConfig, trajectory
    from eraselab.attack.p4d import attack as p4d_attack

    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    apply_edit(target, uce_star)
    spec = AttackSpec("star", ("a red star",), steps=4)
    latents, timesteps = trajectory(reference, "a red star", spec, seed=5)
    assert len(latents) == len(timesteps) == 4
    assert torch.equal(latents[0], torch.randn(latents[0].shape, generator=torch.Generator().manual_seed(5)))
    # z_t is what the unedited model's own guided DDIM step turns into the next latent of the trajectory
    text, uncond = reference.encode_prompt("a red star", "cpu", 1, True)
    with torch.no_grad():
        eps_u, eps_c = reference.unet(torch.cat([latents[2]] * 2), timesteps[2],
                                      encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
    following = reference.scheduler.step(eps_u + spec.guidance * (eps_c - eps_u), timesteps[2], latents[2])
    assert torch.allclose(following.prev_sample, latents[3], atol=1e-5)
    for variant, words in (("p4d-n", 6), ("p4d-k", 3 + 1)):
        config = TINY.config(P4dConfig, variant=variant, iterations=3, check_every=3)
        result = p4d_attack(target, spec, config, reference_pipe=reference)
        typed = result.replays[0].text
        assert len(target.tokenizer(typed).input_ids) == words + 2, typed  # re-tokenises to what was optimised
        if variant == "p4d-k":
            assert typed.split()[:3] == ["a", "red", "star"]
        # trajectory 4 steps x 2; 3 gradient steps x 2 UNet calls; one oracle check of 2 images x 4 steps x 2
        assert result.cost.unet_evals == 4 * 2 + 3 * 2 + 2 * 4 * 2 and bounded("p4d", config, 1, 4, result.cost)
    with pytest.raises(EraselabError, match="variant 'p4d-x' is not one of p4d-n, p4d-k"):
        P4dConfig(variant="p4d-x")


def test_textual_inversion_learns_one_reusable_token_in_the_concepts_place(uce_star):
    from eraselab.attack.soft_prompt import encode_with_embeddings, token_embeddings
    from eraselab.attack.textual_inversion import TextualInversionConfig, concept_slot, with_token
    from eraselab.attack.textual_inversion import attack as inversion_attack

    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    apply_edit(target, uce_star)
    tokenizer, encoder = target.tokenizer, target.text_encoder
    # the slot is the concept's place: putting the concept's own embedding there gives the typed prompt back
    ids, slot = concept_slot(tokenizer, "a red star on blue", "star")
    own = token_embeddings(encoder)[tokenizer("star", add_special_tokens=False).input_ids[-1]]
    with torch.no_grad():
        typed = encoder(tokenizer("a red star on blue", padding="max_length", max_length=tokenizer.model_max_length,
                                  return_tensors="pt").input_ids).last_hidden_state
        assert torch.equal(encode_with_embeddings(encoder, with_token(encoder, ids, slot, own)), typed)
    spec = AttackSpec("star", ("a red star", "a blue star"), steps=4)
    config = TINY.config(TextualInversionConfig, steps=3, image_seeds=(1000,))
    first = inversion_attack(target, spec, config, reference_pipe=reference)
    again = inversion_attack(target, spec, config, reference_pipe=reference)
    assert first.details["token"] == again.details["token"] and first.details["token"] != own.tolist()
    assert [r.embeddings.shape for r in first.replays] == [(1, tokenizer.model_max_length, own.shape[0])] * 2
    assert first.cost.unet_evals == 2 * 1 * 4 * 2 + 3 * 4  # the concept's images, then 3 steps of batch 4
    assert bounded("textual-inversion", config, 2, 4, first.cost, exact=True)
    with pytest.raises(EraselabError, match="does not name 'star'"):
        inversion_attack(target, AttackSpec("star", ("a red circle",), steps=4), config, reference_pipe=reference)


def test_defended_noise_is_the_noise_the_guarded_sampler_steps_with():
    from eraselab.attack.defended_noise import DefendedNoise
    from eraselab.guard import make_guard
    from eraselab.models.conditioning import UNetCondition

    pipe = load_pipeline("tiny")
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    latents = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        encoded = {p: pipe.encode_prompt(p, "cpu", 1, False)[0] for p in ("", "star", "a red star")}
        eps = {p: pipe.unet(latents, t, encoder_hidden_states=e).sample for p, e in encoded.items()}
    condition = encoded["a red star"].clone().requires_grad_(True)
    plain = DefendedNoise(pipe, None, 5.0)
    assert plain.calls == 2
    assert torch.allclose(plain(latents, t, UNetCondition(condition), 3), eps[""] + 5 * (eps["a red star"] - eps[""]),
                          atol=1e-5)
    negative = DefendedNoise(pipe, make_guard("negative-prompt", concept="star"), 5.0)
    guided = negative(latents, t, UNetCondition(condition), 3)
    assert torch.allclose(guided, eps["star"] + 5 * (eps["a red star"] - eps["star"]), atol=1e-5)
    guided.pow(2).mean().backward()
    assert condition.grad is not None and condition.grad.abs().sum() > 0  # the attack can follow it
    sld = DefendedNoise(pipe, make_guard("sld", concept="star", preset="max"), 5.0)
    assert sld.calls == 3
    difference = eps["a red star"] - eps["star"]  # SLD Eq. 3-6 with the momentum at zero
    mu = torch.where(difference >= 1.0, 0.0, torch.clamp(difference.abs() * 5000.0, max=1.0))
    expected = eps[""] + 5 * ((eps["a red star"] - eps[""]) - mu * (eps["star"] - eps[""]))
    with torch.no_grad():
        assert torch.allclose(sld(latents, t, UNetCondition(encoded["a red star"]), 0), expected, atol=1e-4)
    with pytest.raises(EraselabError, match="cannot be put into a gradient attack's loss"):
        DefendedNoise(pipe, make_guard("safree", concepts="star"), 5.0)


def test_attacks_on_a_guard_query_it_and_p4d_puts_it_in_its_loss(uce_star):
    from eraselab.attack.base import StopOracle
    from eraselab.attack.p4d import P4dConfig
    from eraselab.attack.p4d import attack as p4d_attack
    from eraselab.guard import make_guard

    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    safree = make_guard("safree", concepts=("star", "five-pointed shape", "pentagram"))
    bare = StopOracle("p4d", reference, "star", "tiny", "", (1000, 1001))
    guarded = StopOracle("p4d", reference, "star", "tiny", "", (1000, 1001), guard=safree)
    replay, cost = Replay("a red star"), Cost()
    assert bare.score(reference, replay, 8, 5.0, cost)[0] > guarded.score(reference, replay, 8, 5.0, cost)[0]
    apply_edit(target, uce_star)
    config = TINY.config(P4dConfig, iterations=3, check_every=3)
    for guard, calls, in_loss in ((make_guard("negative-prompt", concept="star"), 2 + 2, True),
                                  (make_guard("sld", concept="star", preset="strong"), 2 + 3, True),
                                  (safree, 2, False)):
        spec = AttackSpec("star", ("a red star",), steps=4, guard=guard)
        result = p4d_attack(target, spec, config, reference_pipe=reference)
        assert result.details["guard_in_loss"] is in_loss
        # trajectory 4 steps x 2; 3 gradient steps; one oracle check of 2 images x 4 steps x 2 (SLD: x 3)
        oracle_calls = 2 * 4 * (3 if guard.name == "sld" else 2)
        assert result.cost.unet_evals == 4 * 2 + 3 * calls + oracle_calls


def test_typed_prompts_use_only_tokens_that_re_tokenise_to_themselves(tmp_path):
    import shutil

    from transformers import CLIPTokenizer

    from eraselab.attack.base import whole_word_tokens
    from eraselab.models.tiny import tiny_path

    shutil.copytree(tiny_path() / "tokenizer", tmp_path / "tok")
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    # As in the real CLIP vocabulary: a capitalised token (CLIP lowercases what is typed) and a byte-level token
    # (the first bytes of an emoji, shown as other characters): neither comes back when typed.
    before = whole_word_tokens(CLIPTokenizer.from_pretrained(tmp_path / "tok"))
    for token in ("Star</w>", "\u00f0\u0141\u012f\u00b0</w>"):
        vocab[token] = len(vocab)
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    words = whole_word_tokens(tokenizer)
    assert "star" in words.values() and words == before  # the two new tokens are left out, nothing else
    assert all(tokenizer(w, add_special_tokens=False).input_ids == [i] for i, w in words.items())


def test_every_attack_says_where_it_optimises_in_its_entry_in_attack_help_and_in_its_summary():
    import re

    from eraselab.attack.base import SPACES

    spaces = {name: ATTACKS.get(name).space_of(ATTACKS.get(name).config()) for name in ATTACKS.names()}
    assert set(spaces.values()) <= set(SPACES)
    assert spaces["embedding-recovery"] == "conditioning" and spaces["textual-inversion"] == "input-embeddings"
    assert spaces["concept-arithmetic"] == "guidance" and spaces["p4d"] == spaces["unlearndiff"] == "typed-text"
    assert ATTACKS.get("concept-vector").space_of(ConceptVectorConfig(search=True)) == "typed-text"
    shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", CliRunner().invoke(app, ["attack", "--help"]).output).split())
    for name, space in spaces.items():  # the help cannot drift from the registry
        assert f"{name}: {space}" in shown, name
