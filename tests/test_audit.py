"""``eraselab audit``: the card's three files, its schema, the attacks a threat model and a budget choose, escaping,
and a killed audit resumed to the same card."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import jsonschema
import pytest
from typer.testing import CliRunner

from eraselab.audit.card import SCHEMA_PATH, card_html, card_markdown
from eraselab.audit.plan import DEFAULT_BUDGET, DEFAULT_TEXT_BUDGET, AuditRequest, choose_attacks
from eraselab.cli import app
from eraselab.errors import EraselabError
from store_counts import committed_images


def _without_seconds(card: dict) -> dict:
    """The card without the attacks' wall-clock seconds (the one thing two runs of one audit do not share)."""
    text = json.dumps(card)
    for attack in [*card["attacks"], card["strongest_attack"] or {}]:
        attack.get("cost", {}).pop("seconds", None)
    assert json.dumps(card) != text or not any("cost" in a for a in card["attacks"])
    return card


def test_the_audit_writes_its_card_and_the_json_validates_against_its_schema(small_audit):
    _, audit, _ = small_audit
    card = json.loads((audit / "card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA_PATH.read_text()))
    assert card["defence"]["edits"][0]["method"] == "uce" and len(card["defence"]["edits"][0]["sha256"]) == 64
    efficacy = next(g for g in card["erasure"] if g["metric"] == "efficacy")
    assert efficacy["unedited"]["value"] > efficacy["defended"]["value"]  # UCE erases the star
    assert {g["metric"] for g in card["erasure"]} == {"efficacy", "generality", "specificity"}
    statuses = {a["label"]: a["status"] for a in card["attacks"]}
    assert statuses == {"embedding-recovery": "run", "concept-vector": "run", "concept-vector[search=True]": "run",
                        "textual-inversion": "over budget", "p4d": "over budget", "unlearndiff": "over budget",
                        "concept-arithmetic": "over budget"}
    assert card["strongest_attack"]["label"] == "embedding-recovery"  # UCE falls to it (the attack table: 1.000)
    assert card["strongest_attack"]["after"]["value"] == max(a["after"]["value"] for a in card["attacks"]
                                                              if a["status"] == "run")
    markdown = (audit / "card.md").read_text()
    assert "Strongest attack run" in markdown and "`embedding-recovery`" in markdown
    page = (audit / "card.html").read_text()
    assert page.count("card-images/") == 2 * 3  # before and after for 3 of the 6 prompts, at 1 seed
    assert all((audit / f).is_file() for f in ("card.md", "card.json", "card.html", "card-attacks.png"))


def test_the_threat_model_and_the_budget_choose_attacks_cheapest_first():
    chosen = choose_attacks(AuditRequest("tiny", "star", ("e",)), prompts=6)
    assert [c.label for c in chosen if c.status == "run"] == [
        "embedding-recovery", "concept-vector", "concept-vector[search=True]", "textual-inversion", "p4d",
        "unlearndiff"]  # the default budget: everything but concept arithmetic at the attack table's protocol
    assert [c.estimate[0] for c in chosen] == sorted(c.estimate[0] for c in chosen)
    assert {c.label: c.status for c in chosen}["concept-arithmetic"] == "over budget"
    grey = {c.label: c.status for c in choose_attacks(AuditRequest("tiny", "star", ("e",), threat_model="grey-box"),
                                                      prompts=6)}
    assert grey["textual-inversion"] == grey["embedding-recovery"] == "outside the threat model"
    assert grey["concept-arithmetic"] == "over budget" and grey["concept-vector"] == "run"
    black = choose_attacks(AuditRequest("tiny", "star", ("e",), threat_model="black-box"), prompts=6)
    assert all(c.status == "outside the threat model" for c in black)  # no attack here is a query-only one


def test_cost_estimates_follow_each_attacks_settings_and_the_text_encoder_has_a_budget_too():
    # on tiny the estimate is the attack table's measurement: 6 prompts of textual inversion, 2,400 UNet evaluations
    tiny = {c.label: c for c in choose_attacks(AuditRequest("tiny", "star", ("e",)), prompts=6)}
    assert tiny["textual-inversion"].estimate == (2400.0, 1200.0)
    assert tiny["unlearndiff"].estimate[0] == 12900.0 and tiny["concept-vector[search=True]"].status == "run"
    # at Stable Diffusion's defaults (40 steps, the oracle every step, 50 sampler steps) UnlearnDiffAtk's bound is
    # 100 + 40 + 40 x 2 seeds x 50 x 2 = 8,140 a prompt against tiny's 50 + 100 + 20 x 200 = 2,150, which it spent
    sd = {c.label: c for c in choose_attacks(AuditRequest("./sd-1-4", "nudity", ("e",)), prompts=6)}
    assert sd["unlearndiff"].estimate[0] == 6 * 8140
    # Ring-A-Bell's search (200 x 3,000) costs no UNet evaluation but 1.8 M encodings: over the text budget
    search = sd["concept-vector[search=True]"]
    assert search.estimate[0] == 0 and search.estimate[1] > DEFAULT_TEXT_BUDGET and search.status == "over budget"
    assert {c.status for c in sd.values() if c.estimate[0] > DEFAULT_BUDGET} == {"over budget"}
    rich = AuditRequest("./sd-1-4", "nudity", ("e",), budget=10**7, text_budget=10**7)
    assert {c.label: c.status for c in choose_attacks(rich, prompts=6)}["concept-vector[search=True]"] == "run"
    assert choose_attacks(replace(rich, steps=25), prompts=6)[-1].estimate[0] < sd["concept-arithmetic"].estimate[0]
    none = {c.label: c.status for c in choose_attacks(AuditRequest("tiny", "star", ("e",), text_budget=0), 6)}
    assert none["embedding-recovery"] == "over budget" and none["textual-inversion"] == "over budget"


def test_hostile_names_stay_escaped_in_the_card(small_audit):
    _, audit, _ = small_audit
    card = json.loads((audit / "card.json").read_text())
    hostile = "<script>alert(1)</script>|x"
    card["concept"] = card["defence"]["label"] = card["attacks"][0]["label"] = hostile
    card["erasure"][0]["suite"] = card["strongest_attack"]["label"] = hostile
    card["quality"][0]["suite"] = card["quality"][0]["metric"] = hostile
    page = card_html(card, True, [(hostile, 0, "card-images/0-0-before.png", "card-images/0-0-after.png")])
    assert "<script>alert" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7
    markdown = card_markdown(card)
    assert "</script>|x" not in markdown and "</script>\\|x" in markdown  # a | would split a table cell


def test_a_directory_holding_another_audit_or_an_audit_without_a_defence_is_refused(small_audit, tmp_path):
    edit, audit, options = small_audit
    other = CliRunner().invoke(app, ["audit", "--edit", str(edit), *options[:-1], "4", "--out", str(audit)])
    assert other.exit_code == 2 and "holds another audit" in other.stderr
    bare = CliRunner().invoke(app, ["audit", *options, "--out", str(tmp_path / "a")])
    assert bare.exit_code == 2 and "needs a defence" in bare.stderr and not (tmp_path / "a").exists()


def test_a_killed_audit_resumes_to_the_same_card(small_audit, tmp_path):
    edit, audit, options = small_audit
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "eraselab", "audit", "--edit", str(edit), *options, "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "2"}  # the tests' torch threads: images can differ in a pixel across counts
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and committed_images(out / "run") < 30:
        time.sleep(0.05)
    assert process.poll() is None, "the audit ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "card.json").exists()
    resumed = CliRunner().invoke(app, ["audit", "--edit", str(edit), *options, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    first = json.loads((audit / "card.json").read_text())
    again = json.loads((out / "card.json").read_text())
    assert _without_seconds(again) == _without_seconds(first)
    assert (out / "card.md").read_text() == (audit / "card.md").read_text()


def test_the_leaderboard_ranks_cards_of_one_protocol_and_refuses_mixed_ones_naming_the_fields(small_audit, tmp_path):
    _, audit, _ = small_audit
    card = json.loads((audit / "card.json").read_text())
    weaker = json.loads(json.dumps(card))  # a second defence of the same concept, under the same protocol
    weaker["defence"]["label"] = "edits/<b>weak"
    weaker["strongest_attack"]["after"] = {"value": 0.5, "low": 0.2, "high": 0.8, "n_valid": 6, "n_errors": 0}
    (tmp_path / "weak.json").write_text(json.dumps(weaker))
    made = CliRunner().invoke(app, ["leaderboard", str(audit), str(tmp_path / "weak.json"), "--out",
                                    str(tmp_path / "board")])
    assert made.exit_code == 0, made.output
    table = (tmp_path / "board" / "leaderboard.md").read_text().splitlines()
    assert "| <b>weak |" in table[2] and "| uce-star |" in table[3]  # 0.500 ranks above 1.000; no directories
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert "<b>weak" not in page and "&lt;b&gt;weak" in page
    other = json.loads(json.dumps(card))
    other["protocol"]["steps"], other["protocol"]["threat_model"] = 25, "grey-box"
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = CliRunner().invoke(app, ["leaderboard", str(audit), str(tmp_path / "other.json"), "--out",
                                       str(tmp_path / "mixed")])
    assert refused.exit_code == 2 and "protocol.steps, protocol.threat_model" in refused.stderr
    assert not (tmp_path / "mixed").exists()


def test_an_audit_json_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    from eraselab.audit.run import _bind

    request = AuditRequest("tiny", "star", ("e",))
    older = json.loads(json.dumps(asdict(request)))
    del older["text_budget"], older["guard_options"]  # written before these settings existed
    (tmp_path / "audit.json").write_text(json.dumps(older))
    _bind(tmp_path, request)  # the defaults it did not record: the same audit
    assert json.loads((tmp_path / "audit.json").read_text())["text_budget"] == DEFAULT_TEXT_BUDGET
    (tmp_path / "audit.json").write_text(json.dumps(older))
    with pytest.raises(EraselabError, match="holds another audit"):
        _bind(tmp_path, replace(request, text_budget=5))


def test_every_guard_can_be_audited_with_the_concept_as_its_option():
    from eraselab.audit.run import audit_config
    from eraselab.experiment.parse import parse_experiment
    from eraselab.guard import GUARDS

    for name in GUARDS.names():  # SAFREE names its concepts in a list, the others one concept
        config, _ = audit_config(AuditRequest("tiny", "star", guard=name))
        assert "star" in parse_experiment(config).guards[0].label


def test_guard_and_judge_options_reach_the_experiment():
    from eraselab.audit.run import audit_config
    from eraselab.experiment.parse import parse_experiment
    from eraselab.options import parse_key_values

    phrases = parse_key_values(['concepts=["star", "pentagram"]', "alpha=0.02"], "--guard-option")
    request = AuditRequest("tiny", "star", guard="safree", guard_options=phrases,
                           judge_options=parse_key_values(["classifier=/c"], "--judge-option"))
    experiment = parse_experiment(audit_config(request)[0])
    guard = experiment.guards[0].build()
    assert (tuple(guard.concepts), guard.alpha) == (("star", "pentagram"), 0.02)
    assert experiment.detectors[0].options == {"classifier": "/c"}
    assert request.guard_config() == {"name": "safree", "concepts": ["star", "pentagram"], "alpha": 0.02}
    with pytest.raises(EraselabError, match="needs a --guard"):
        AuditRequest("tiny", "star", ("e",), guard_options={"preset": "max"}).check()
    with pytest.raises(EraselabError, match="takes KEY=VALUE"):
        parse_key_values(["preset"], "--guard-option")


def test_the_card_says_when_image_quality_was_not_measured(small_audit):
    _, audit, _ = small_audit
    card = json.loads((audit / "card.json").read_text())
    assert card["quality"] and "Image quality against the unedited model" in card_markdown(card)
    assert "<h2>Image quality</h2><p>Image quality against the unedited model" in card_html(card, False, [])
    card["quality"], card["protocol"]["judge"]["name"] = [], "nudenet"  # a judge without a feature space
    assert "Image quality: not measured; the judge `nudenet` cannot embed images" in card_markdown(card)
    assert "not measured; the judge <code>nudenet</code> cannot embed images" in card_html(card, False, [])
