"""Copyright traps on a micro GPT-2 trained here in seconds: scores against plain re-derivations, the exactness of
the rank test, generation filters, injection offsets and the key, detection, the CLI and its bad input."""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eraselab.cli import app
from eraselab.errors import EraselabError
from eraselab.traps.detect import detect
from eraselab.traps.evidence import FisherNull, calibration, fisher_statistic, membership_test, rank_p_value
from eraselab.traps.generate import TrapRequest, generate_traps, jaccard, tokenizer_fingerprint
from eraselab.traps.inject import inject, read_documents, sha256
from eraselab.traps.lm import LmRecipe, save_lm, train_lm, train_tokenizer
from eraselab.traps.power import simulate_power
from eraselab.traps.scores import SCORES
from eraselab.traps.scores.stats import token_stats
from eraselab.traps.world import chronicle_corpus

MICRO = LmRecipe(layers=1, width=32, heads=2, block=64, epochs=1, batch=16, lr=5e-3, warmup=5, seed=0)
BAND = (1.0, 1e6)  # any perplexity: the micro tests check the machinery, the demo measures the band


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    docs = chronicle_corpus(120, seed=3)
    tokenizer = train_tokenizer(docs, vocab_size=400)
    model = train_lm(docs, tokenizer, MICRO, progress=False)
    path = save_lm(model, tokenizer, tmp_path_factory.mktemp("micro") / "lm")
    return model, tokenizer, path


@pytest.fixture(scope="module")
def traps(micro):
    model, tokenizer, path = micro
    return generate_traps(model, tokenizer, TrapRequest(12, BAND, count=4, siblings=5, seed=1, batch=32),
                          str(path), progress=False)


def _plain_scores(model, begin: int, ids: list[int], context: list[int], text: str, reference=None) -> dict:
    """Each score re-derived one sequence at a time, with explicit loops over positions and the vocabulary."""
    row = torch.tensor([[begin, *context, *ids]])
    with torch.no_grad():
        logits = model(row).logits[0].double()
        reference_logits = reference(row).logits[0].double() if reference is not None else None
    log_probs, standardised, reference_log_probs = [], [], []
    for t, token in enumerate(ids):
        position = len(context) + t  # the logits at this position predict ``token``
        distribution = torch.softmax(logits[position], -1)
        log_p = torch.log(distribution)
        mean = sum(distribution[v] * log_p[v] for v in range(len(distribution)))
        variance = sum(distribution[v] * (log_p[v] - mean) ** 2 for v in range(len(distribution)))
        log_probs.append(float(log_p[token]))
        standardised.append(float((log_p[token] - mean) / variance.sqrt()))
        if reference_logits is not None:
            reference_log_probs.append(float(torch.log_softmax(reference_logits[position], -1)[token]))
    k = max(1, int(len(ids) * 0.2))  # both references: int(len * k) (floor); at least one token
    mean_ll = sum(log_probs) / len(ids)
    scores = {"loss": mean_ll, "zlib": mean_ll / len(zlib.compress(text.encode())),
              "min-k": sum(sorted(log_probs)[:k]) / k, "min-k++": sum(sorted(standardised)[:k]) / k}
    if reference is not None:
        scores["reference-ratio"] = -(-mean_ll - (-sum(reference_log_probs) / len(ids)))
    return scores


def test_every_score_matches_a_plain_rederivation_with_padding_and_context(micro):
    model, tokenizer, _ = micro
    torch.manual_seed(5)
    from eraselab.traps.lm import make_model

    reference = make_model(len(tokenizer), LmRecipe(layers=1, width=16, heads=2, seed=7)).eval()
    sequences = [torch.randint(1, len(tokenizer), (n,)).tolist() for n in (5, 11, 8)]
    contexts = [[], torch.randint(1, len(tokenizer), (4,)).tolist(), [7, 9]]
    texts = ["a b c", "the miller sold salt", "zzz"]
    begin = tokenizer.eos_token_id
    target = token_stats(model, sequences, texts, begin, contexts, batch_size=2)  # padded batches
    ref = token_stats(reference, sequences, texts, begin, contexts, batch_size=3)
    for name in SCORES.names():
        values = SCORES.get(name).compute(target, ref)
        for i, (ids, context, text) in enumerate(zip(sequences, contexts, texts, strict=True)):
            expected = _plain_scores(model, begin, ids, context, text, reference)[name]
            assert values[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, i)


@pytest.mark.parametrize("length", [3, 7, 12, 23, 64])
def test_min_k_and_min_k_plus_plus_follow_the_reference_codes_token_count(length):
    # MIMIR's min_k: np.sort(log_probs)[:int(len(log_probs) * k)].mean(); the official Min-K%++ code: the same on the
    # standardised scores. Floor, not ceiling (12 tokens: 2, not 3); the guard takes one token where k n < 1.
    from eraselab.traps.scores.stats import TokenStats

    g = torch.Generator().manual_seed(length)
    log_prob, mean = -torch.rand(1, length, generator=g, dtype=torch.float64) * 5, -torch.rand(1, length, generator=g,
                                                                                               dtype=torch.float64)
    std = torch.rand(1, length, generator=g, dtype=torch.float64) + 0.5
    stats = TokenStats(log_prob=log_prob, mean_log_prob=mean, std_log_prob=std,
                       mask=torch.ones(1, length, dtype=torch.bool), texts=("x",))
    count = max(1, int(length * 0.2))
    mimir = np.sort(log_prob[0].numpy())[:count].mean()
    official = np.sort(((log_prob - mean) / std)[0].numpy())[:count].mean()
    assert SCORES.get("min-k").compute(stats, None).item() == pytest.approx(mimir, abs=1e-12)
    assert SCORES.get("min-k++").compute(stats, None).item() == pytest.approx(official, abs=1e-12)


def test_rank_p_values_and_the_exact_fisher_null_match_enumeration():
    assert rank_p_value(5.0, [1, 2, 3]) == 0.25
    assert rank_p_value(2.0, [1, 2, 3]) == 0.75  # a tie counts against the claim
    # Two traps with 3 siblings each: 16 equally likely rank pairs under the null.
    statistic = fisher_statistic([0.25, 0.5])
    exact = sum(fisher_statistic([a / 4, b / 4]) >= statistic - 1e-12
                for a, b in itertools.product(range(1, 5), repeat=2)) / 16
    assert FisherNull([3, 3], draws=200_000).p_value(statistic) == pytest.approx(exact, abs=0.005)


def test_the_combined_test_is_calibrated_on_exchangeable_scores_and_finds_a_real_gap():
    rng = np.random.default_rng(0)
    siblings = [rng.normal(0, 1, 9).tolist() for _ in range(15)]
    null = calibration(rng.normal(0, 1, 15).tolist(), siblings, draws=400, alpha=0.05)
    assert null["exact"]["rejection_rate"] <= 0.05 + 0.03  # sampling error of 400 draws
    result = membership_test(rng.normal(2.5, 1, 15).tolist(), siblings)
    true_auc = 0.9614  # Phi(2.5 / sqrt 2): the interval excludes chance and holds the truth
    assert result["combined_p"] < 1e-4 and 0.5 < result["auc"]["low"] <= true_auc <= result["auc"]["high"]
    assert result["auc"]["low"] <= result["auc"]["value"] <= result["auc"]["high"]


def test_tpr_is_an_exact_fraction_and_the_floor_p_value_prints_as_a_bound():
    from eraselab.traps.commands import summary_line
    from eraselab.traps.evidence import tpr_at_fpr

    members, controls = [9.0, 8.0, 7.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [float(i) / 100 for i in range(100)]
    assert tpr_at_fpr(members, controls, 0.01) == 0.3  # 3 of 10, not float32's 0.30000001192092896
    test = {"auc": {"value": 0.9, "low": 0.8, "high": 0.95}, "tpr_at_1pct_fpr": 0.3, "tpr_at_10pct_fpr": 0.3,
            "combined_p": 1 / 200_001, "combined_p_resolution": 1 / 200_001}
    assert summary_line("loss", test).split()[-1] == "<=5e-06"
    assert summary_line("loss", {**test, "combined_p": 0.0123}).split()[-1] == "0.012"


@pytest.mark.parametrize(("traps", "siblings", "draws"), [(8, 19, 400), (96, 5, 100)])
def test_the_auc_interval_excludes_chance_at_most_5_percent_of_the_time_under_the_null(traps, siblings, draws):
    # The percentile bootstrap's "95%" interval excluded 0.5 in 10.3% of null runs with 8 published traps. Scores
    # here are exchangeable (no membership): the interval may exclude 0.5 in at most 5% + 2.6 Monte Carlo SE.
    from eraselab.traps.evidence import auc_with_interval

    rng = np.random.default_rng(traps)
    excluded = 0
    for draw in range(draws):
        published, siblings_ = rng.normal(size=traps), rng.normal(size=(traps, siblings))
        interval = auc_with_interval(published.tolist(), siblings_.tolist(), seed=draw)
        excluded += not interval["low"] <= 0.5 <= interval["high"]
    assert excluded / draws <= 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / draws), excluded


def test_the_auc_interval_covers_a_true_auc_that_the_bootstrap_alone_missed():
    # 8 traps whose published member scores N(2, 1) against N(0, 1) siblings: true AUC = Phi(2 / sqrt 2) = 0.921.
    # Measured over 300 runs: the percentile bootstrap missed it in 21%, BCa in 16%; this interval in 0%.
    from eraselab.traps.evidence import auc_with_interval

    rng, true, missed = np.random.default_rng(5), 0.9213503964748575, 0
    for draw in range(100):
        published, siblings_ = rng.normal(size=8) + 2.0, rng.normal(size=(8, 19))
        interval = auc_with_interval(published.tolist(), siblings_.tolist(), seed=draw)
        missed += not interval["low"] <= true <= interval["high"]
    assert missed <= 5 + 2.6 * math.sqrt(5 * 0.95)  # 5% + 2.6 SE of 100


def test_a_degenerate_bootstrap_falls_back_to_the_permutation_interval_without_warnings():
    import warnings

    from eraselab.traps.evidence import auc_with_interval

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI printed SciPy's BCa warnings on the demo's perfectly separated groups
        interval = auc_with_interval([5.0, 6.0, 7.0], [[0.0, 0.1, 0.2, 0.3]] * 3)
    assert interval["value"] == 1.0 and interval["high"] == 1.0 and 0.5 < interval["low"] < 1.0


def test_power_grows_with_the_effect_and_is_alpha_at_no_effect():
    assert simulate_power(0.0, 10, 19, alpha=0.05, draws=2000)["power"] <= 0.065
    assert simulate_power(0.5, 10, 19, draws=500)["power"] < simulate_power(1.5, 10, 19, draws=500)["power"]


def test_generated_traps_round_trip_are_not_near_duplicates_and_roles_are_complete(micro, traps):
    _, tokenizer, _ = micro
    published = [t for t in traps if t["role"] == "published"]
    assert len(published) == 4 and len(traps) == 4 * 6
    for trap in traps:
        assert tokenizer(trap["text"], add_special_tokens=False).input_ids == trap["token_ids"]
        assert len(trap["token_ids"]) == 12
    for a, b in itertools.combinations(traps, 2):
        assert jaccard(set(a["token_ids"]), set(b["token_ids"])) <= 0.2
    assert {t["trap"] for t in traps} == {t["id"] for t in published}
    assert all(sum(s["trap"] == p["id"] for s in traps if s["role"] == "sibling") == 5 for p in published)


def test_generation_is_reproducible_and_an_unreachable_band_says_what_was_reached(micro, traps):
    model, tokenizer, path = micro
    again = generate_traps(model, tokenizer, TrapRequest(12, BAND, count=4, siblings=5, seed=1, batch=32),
                           str(path), progress=False)
    assert again == traps
    with pytest.raises(EraselabError, match=r"band 1:1\.01 not filled: sampled perplexities reached"):
        generate_traps(model, tokenizer, TrapRequest(12, (1.0, 1.01), 4, 5, rounds=2, batch=8), progress=False)


def test_injection_places_every_copy_where_the_key_says_and_leaves_the_originals(micro, traps):
    _, tokenizer, _ = micro
    docs = {f"d{i}": text for i, text in enumerate(chronicle_corpus(6, seed=9))}
    originals = dict(docs)
    injected, key = inject(traps, docs, repetitions=3, seed=2)
    assert docs == originals
    for trap in key["traps"]:
        assert trap["repetitions"] == 3 and len(trap["copies"]) == 3
        assert len({c["document"] for c in trap["copies"]}) == 3  # spread over documents
        for copy in trap["copies"]:
            assert injected[copy["document"]][copy["offset"]:copy["offset"] + len(trap["text"])] == trap["text"]
        assert len(trap["siblings"]) == 5
        assert all(s["text"] not in "".join(injected.values()) for s in trap["siblings"])
    assert key["documents"] == {name: sha256(text) for name, text in injected.items()}
    fuzzy, _ = inject(traps, docs, repetitions=2, seed=2, fuzzy=3, tokenizer=tokenizer)
    assert sum(text.count(t["text"]) for t in traps if t["role"] == "published" for text in fuzzy.values()) < 8


def test_detect_refuses_a_tokenizer_mismatch_changed_documents_and_too_few_siblings(micro, traps):
    model, tokenizer, _ = micro
    docs = {f"d{i}": text for i, text in enumerate(chronicle_corpus(6, seed=9))}
    injected, key = inject(traps, docs, repetitions=2, seed=2)
    report = detect(key, model, tokenizer, docs=injected, context=True)
    assert set(report["scores"]) == {"loss", "zlib", "min-k", "min-k++"}
    assert len(report["scores"]["loss"]["all"]["p_values"]) == 4
    other = train_tokenizer(chronicle_corpus(30, seed=4), vocab_size=300)
    assert tokenizer_fingerprint(other) != key["tokenizer"]
    with pytest.raises(EraselabError, match="tokenizer mismatch"):
        detect(key, model, other)
    with pytest.raises(EraselabError, match="do not match the key: d0"):
        detect(key, model, tokenizer, docs={**injected, "d0": injected["d0"] + " edited"})
    with pytest.raises(EraselabError, match="needs the published documents"):
        detect(key, model, tokenizer, context=True)
    few = {**key, "traps": [{**t, "siblings": t["siblings"][:2]} for t in key["traps"]]}
    with pytest.raises(EraselabError, match="8 sibling traps in all; at least 10"):
        detect(few, model, tokenizer)
    # one trap without siblings once scored p = 1 silently, whatever the model had seen
    lonely = {**key, "traps": [{**t, "siblings": [] if i == 1 else t["siblings"]} for i, t in enumerate(key["traps"])]}
    with pytest.raises(EraselabError, match=re.escape(f"trap {key['traps'][1]['id']!r} has 0 siblings; every "
                                                      "published trap needs at least 4")):
        detect(lonely, model, tokenizer)


def test_cli_generate_inject_detect_power(micro, tmp_path: Path):
    _, _, path = micro
    runner = CliRunner()
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(chronicle_corpus(5, seed=11)):
        (docs / f"{i}.txt").write_text(text)
    traps_file = tmp_path / "traps.jsonl"
    result = runner.invoke(app, ["traps", "generate", "--reference-model", str(path), "--length", "10", "--ppl-band",
                                 "1:1000000", "--count", "3", "--siblings", "4", "--out", str(traps_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["siblings"] == 12
    key = str(tmp_path / "key.json")
    result = runner.invoke(app, ["traps", "inject", "--traps", str(traps_file), "--docs", str(docs), "--repetitions",
                                 "2", "--fuzzy", "1", "--out", str(tmp_path / "pub"), "--key", key])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == sorted(p.name for p in docs.iterdir())
    roc = tmp_path / "roc.png"
    result = runner.invoke(app, ["traps", "detect", "--key", str(tmp_path / "key.json"), "--model", str(path),
                                 "--reference-model", str(path), "--docs", str(tmp_path / "pub"), "--context",
                                 "--roc", str(roc), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["context"] and "reference-ratio" in report["scores"] and roc.stat().st_size > 0
    result = runner.invoke(app, ["traps", "power", "--effect", "1.5", "--traps", "10", "--json"])
    assert result.exit_code == 0 and 0 < json.loads(result.output)["power"] <= 1


@pytest.mark.parametrize(("args", "message"), [
    (["generate", "--reference-model", "{path}", "--ppl-band", "60", "--out", "{tmp}/t.jsonl"], "LO:HI"),
    (["generate", "--reference-model", "{path}", "--count", "2", "--siblings", "4", "--out", "{tmp}/t.jsonl"],
     "at least 10 are needed"),
    (["generate", "--reference-model", "{tmp}/none", "--out", "{tmp}/t.jsonl"], "cannot load a causal language model"),
    (["inject", "--traps", "{tmp}/none.jsonl", "--docs", "{tmp}", "--out", "{tmp}/o", "--key", "{tmp}/k.json"],
     "does not exist"),
    (["detect", "--key", "{tmp}/t.jsonl", "--model", "{path}"], "not an eraselab trap key"),
    (["inject", "--traps", "{tmp}/t.jsonl", "--docs", "{tmp}/t.jsonl", "--out", "{tmp}/o", "--key", "{tmp}/k.json"],
     "line 1: not a trap from `traps generate` (field 'id' missing"),
    (["inject", "--traps", "{tmp}/binary.jsonl", "--docs", "{tmp}", "--out", "{tmp}/o", "--key", "{tmp}/k.json"],
     "binary.jsonl is not UTF-8 text"),

    (["power", "--effect", "1", "--traps", "2", "--siblings", "3"], "at least 10 are needed"),
    (["generate", "--reference-model", "{path}", "--count", "20", "--siblings", "2", "--out", "{tmp}/t.jsonl"],
     "every published trap needs at least 4 siblings"),
])
def test_cli_bad_input_is_one_line_and_exit_2(micro, tmp_path: Path, args, message):
    _, _, path = micro
    (tmp_path / "t.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe{}\n")
    result = CliRunner().invoke(app, ["traps", *[a.format(path=path, tmp=tmp_path) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("damage", "message"), [
    ("change-sealed", "seal does not match"),
    ("text-id", "token_ids must be a non-empty list of token ids"),
    ("huge-id", "outside the suspect model's vocabulary"),
    ("no-copies", "copies must be a list"),
    ("roc-under-a-file", "cannot write to ROC plot file"),
])
def test_a_damaged_key_or_bad_roc_path_is_one_line_and_exit_2(micro, traps, tmp_path: Path, damage, message):
    _, _, path = micro
    _, key = inject(traps, {"a.txt": " ".join(chronicle_corpus(3, seed=2))}, 2, seed=0)
    if damage != "change-sealed":
        del key["seal"]  # a key from before keys were sealed: its structure is all there is to check
    trap = key["traps"][1]
    if damage in ("change-sealed", "huge-id"):
        trap["token_ids"][0] = 10**6
    elif damage == "text-id":
        trap["token_ids"][0] = "x"
    elif damage == "no-copies":
        del trap["copies"]
    (tmp_path / "key.json").write_text(json.dumps(key))
    (tmp_path / "blocker").write_text("")
    roc = tmp_path / ("blocker/roc.png" if damage == "roc-under-a-file" else "plots/roc.png")
    result = CliRunner().invoke(app, ["traps", "detect", "--key", str(tmp_path / "key.json"), "--model", str(path),
                                      "--roc", str(roc)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output
    assert not (tmp_path / "plots").exists()


def test_the_report_comes_first_and_the_plot_goes_into_a_new_directory(micro, traps, tmp_path: Path):
    _, _, path = micro
    _, key = inject(traps, {"a.txt": " ".join(chronicle_corpus(3, seed=2))}, 2, seed=0)
    (tmp_path / "key.json").write_text(json.dumps(key))
    roc = tmp_path / "missing" / "roc.png"
    result = CliRunner().invoke(app, ["traps", "detect", "--key", str(tmp_path / "key.json"), "--model", str(path),
                                      "--roc", str(roc), "--json"])
    assert result.exit_code == 0, result.output
    assert "scores" in json.loads(result.stdout.strip().splitlines()[-1]) and roc.stat().st_size > 0


@pytest.mark.parametrize("layout", ["txt", "jsonl"])
def test_detect_reads_the_documents_inject_wrote_in_either_layout(micro, traps, tmp_path: Path, layout):
    # A JSONL corpus comes out of `inject` as DIR/documents.jsonl, which `detect --docs DIR` once could not read
    # ("the corpus at DIR is empty"), the demo's published/ among them.
    _, _, path = micro
    texts = chronicle_corpus(5, seed=11)
    if layout == "txt":
        source = tmp_path / "docs"
        source.mkdir()
        for i, text in enumerate(texts):
            (source / f"{i}.txt").write_text(text)
    else:
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    traps_file = tmp_path / "traps.jsonl"
    traps_file.write_text("".join(json.dumps(t) + "\n" for t in traps))
    runner, key, published = CliRunner(), tmp_path / "key.json", tmp_path / "pub"
    result = runner.invoke(app, ["traps", "inject", "--traps", str(traps_file), "--docs", str(source), "--repetitions",
                                 "2", "--out", str(published), "--key", str(key)])
    assert result.exit_code == 0, result.output
    documents = read_documents(published)
    assert {name: sha256(text) for name, text in documents.items()} == json.loads(key.read_text())["documents"]
    result = runner.invoke(app, ["traps", "detect", "--key", str(key), "--model", str(path), "--docs", str(published),
                                 "--context", "--json"])
    assert result.exit_code == 0, result.output
    if layout == "jsonl":  # a directory holding both layouts is ambiguous: refused, naming both
        (published / "extra.txt").write_text("Not injected.")
        with pytest.raises(EraselabError, match=r"both documents\.jsonl and \.txt files"):
            read_documents(published)


def test_an_empty_corpus_is_refused(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n')
    with pytest.raises(EraselabError, match="is empty"):
        read_documents(tmp_path / "empty.jsonl")
    (tmp_path / "docs.jsonl").write_text('{"text": "One. Two."}\nnot json\n')
    with pytest.raises(EraselabError, match="line 2: not valid JSON"):
        read_documents(tmp_path / "docs.jsonl")
    with pytest.raises(EraselabError, match="corpus is empty"):
        train_tokenizer(["", " "])


def test_the_trap_world_demo_runs_end_to_end_at_micro_size(tmp_path: Path):
    from eraselab.traps.demo import TrapWorld, run_demo

    world = TrapWorld(lengths=(10,), bands=(BAND,), repetitions=(1, 20), traps_per_cell=3, siblings=4,
                      public_documents=80, private_documents=60, vocab_size=400, reference_recipe=MICRO,
                      recipe=MICRO, calibration_draws=50)
    report = run_demo(tmp_path, world, progress=False)
    assert set(report) >= {"suspect", "suspect_context", "clean", "calibration"}
    assert sorted(report["suspect"]["groups"]) == ["len10-ppl1-1e+06-rep1 x1", "len10-ppl1-1e+06-rep20 x20"]
    table = (tmp_path / "table.md").read_text()
    assert "| len10-ppl1-1e+06 x20 |" in table and "calibration on the clean model" in table
    for name in ("roc.png", "key.json", "traps.jsonl", "published/documents.jsonl", "models/suspect/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    result = CliRunner().invoke(app, ["traps", "detect", "--key", str(tmp_path / "key.json"), "--model",
                                      str(tmp_path / "models/suspect"), "--docs", str(tmp_path / "published")])
    assert result.exit_code == 0, result.output  # the demo's own published/ directory
