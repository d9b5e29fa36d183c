import numpy as np
import pytest
import torch

from eraselab.erase.artifact import apply_edit
from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import UceConfig, erase
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.models import cross_attention_layers, load_pipeline
from eraselab.models.conditioning import encode
from eraselab.models.tiny.classifier import load_classifier
from eraselab.models.tiny.suites import tiny_suite
from eraselab.models.tiny.world import load_world
from eraselab.requests import GenerationRequest


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def test_edited_values_map_the_concept_to_its_anchor_and_keep_preserved_concepts(tiny):
    edit = erase(tiny, EraseSpec(("star",), ("shape",), ("circle",)), UceConfig(positions="last-word"))
    layer = cross_attention_layers(tiny.unet)[0]
    w0, w = layer.to_v.weight.detach().double(), edit.tensors[f"unet.{layer.name}.to_v.weight"].double()
    encoded = encode(tiny, ["star", "shape", "circle"])
    hidden, last = encoded.hidden, encoded.last_word
    star, shape = hidden[0, last[0]], hidden[1, last[1]]
    before, after = (w0 @ star - w0 @ shape).norm(), (w @ star - w0 @ shape).norm()
    assert after < 0.25 * before  # the concept's value now points at the anchor's
    circle = hidden[2]
    assert (w @ circle.T - w0 @ circle.T).norm() < 0.25 * (w0 @ circle.T).norm()
    assert edit.manifest["base_fingerprint"] and edit.manifest["config"]["lamb"] == 0.5  # the UCE script's
    assert "train_erase.py" in edit.manifest["defaults_from"]
    assert edit.manifest["resolved"]["preserve_scale"] == 0.5  # max(0.1, 1 / (1 + one preserved prompt))


def test_the_empty_prompt_is_always_preserved_as_the_references_do(tiny):
    from eraselab.erase.uce import preservation

    empty = encode(tiny, [""]).hidden[0]
    rows, stats = preservation(tiny, EraseSpec(("star",), ("shape",)), None)
    assert stats is None and torch.equal(rows, empty)  # every position of "", the padding included
    rows, _ = preservation(tiny, EraseSpec(("star",), ("shape",), ("circle",), ("a {}",)), None)
    circle = encode(tiny, ["a circle"]).hidden[0]
    assert torch.equal(rows[: len(empty)], empty) and torch.equal(rows[len(empty):], circle)
    assert preservation(tiny, EraseSpec(("star",), ("shape",)), None, keep_empty=False)[0] is None
    edit = erase(tiny, EraseSpec(("star",), ("shape",)), UceConfig(preserve_scale=1e3))
    layer = cross_attention_layers(tiny.unet)[0]
    w0, w = layer.to_k.weight.detach().double(), edit.tensors[f"unet.{layer.name}.to_k.weight"].double()
    assert (w @ empty.T - w0 @ empty.T).norm() < 1e-3 * (w0 @ empty.T).norm()  # the unconditional branch holds


def test_uce_erases_the_star_and_keeps_the_other_shapes(tiny):
    world, judge = load_world(), load_classifier()
    star, circle = world.shapes.index("star"), world.shapes.index("circle")
    spec = EraseSpec(("star",), ("shape",), templates=world.erase_templates("star"))
    requests = [GenerationRequest(world.prompt(s, c), seed, steps=10) for s in (star, circle) for c in range(6)
                for seed in (0, 1)]
    with apply_edit(tiny, erase(tiny, spec, UceConfig())):
        shapes = judge.predict(generate_images(tiny, requests, progress=False))["shape"]
    assert np.mean(shapes[:12] == star) <= 0.25 and np.mean(shapes[12:] == circle) >= 0.9


def test_bad_specs_are_refused(tiny):
    with pytest.raises(EraselabError, match="anchor of 'star' is the concept itself"):
        erase(tiny, EraseSpec(("star",), ("star",)), UceConfig())
    with pytest.raises(EraselabError, match="does not know: zebra"):
        erase(tiny, EraseSpec(("zebra",)), UceConfig())
    with pytest.raises(EraselabError, match="positions must be"):
        erase(tiny, EraseSpec(("star",)), UceConfig(positions="all"))
    with pytest.raises(EraselabError, match="did you mean 'uce'"):
        ERASERS.get("uec")


def test_several_concepts_in_one_edit(tiny):
    edit = erase(tiny, EraseSpec(("star", "heart"), ("shape",)), UceConfig())
    single = erase(tiny, EraseSpec(("star",), ("shape",)), UceConfig())
    name = next(iter(edit.tensors))
    assert not torch.equal(edit.tensors[name], single.tensors[name])


def test_keys_start_at_the_concepts_own_token_inside_a_prompt(tiny):
    from eraselab.erase.uce import concept_rows

    spec = EraseSpec(("red",), ("",), templates=("a {} star",))
    assert spec.pairs() == [("a red star", "a star")] and spec.prefixes() == [("a red", "a")]
    keys, anchors = concept_rows(tiny, spec, spec.pairs(), "word-to-eot")
    target, anchor = encode(tiny, ["a red star"]).hidden[0], encode(tiny, ["a star"]).hidden[0]
    assert torch.equal(keys[0], target[2])  # [BOS, a, red, star, ...]: "red", not the last word "star"
    assert torch.equal(anchors[0], anchor[1]) and torch.equal(keys[1], target[3])
    last = concept_rows(tiny, spec, spec.pairs(), "last-word")[0]
    assert last.shape[0] == 1 and torch.equal(last[0], target[2])


def test_spec_prompts_take_the_article_of_the_word_formatted_in_and_templates_cover_the_evaluation_forms():
    spec = EraseSpec(("outlined",), ("solid",), ("outline",), templates=("a {}", "a {} red shape"))
    assert spec.pairs() == [("an outlined", "a solid"), ("an outlined red shape", "a solid red shape")]
    assert spec.prefixes()[1] == ("an outlined", "a solid")
    assert spec.preserved() == ["an outline", "an outline red shape"]
    world = load_world()
    for concept, name in (("red", "red"), ("outlined", "outline"), ("star", "star")):
        forms = {target for target, _ in EraseSpec((concept,), templates=world.erase_templates(concept)).pairs()}
        evaluation = {item.prompt for item in tiny_suite("target", name).items}  # "a red star", "an outlined red shape"
        assert evaluation <= forms, concept
