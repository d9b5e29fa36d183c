"""The tiny world's prompt suites around one concept (a shape, a colour or a fill style).

Kinds, for concept ``star`` (a shape; colours and fills work the same way along their attribute):
- ``target``: the concept's canonical word across every value of the other attribute ("a red star", ...);
- ``paraphrase``: its other training paraphrases ("a red five-pointed shape", ...);
- ``heldout``: its held-out paraphrase, never in the UNet's training captions ("a red pentagram", ...);
- ``neighbour``: the other classes of the same attribute ("a red circle", ...);
- ``unrelated``: prompts that name another attribute only ("a red shape", "a striped shape on a dark background");
- ``empty``: the empty prompt.
Each item's categories hold what the image should show (``shape=star``, ``color=red``) for the judge.

>>> [i.prompt for i in tiny_suite("heldout", "star").items][:2]
['a red pentagram', 'an orange pentagram']
>>> tiny_suite("target", "red").items[1].categories
('shape=square', 'color=red')
"""

from __future__ import annotations

from eraselab.errors import EraselabError
from eraselab.models.tiny.world import World, load_world
from eraselab.suites import PromptItem, PromptSuite
from eraselab.text import with_article

KINDS = ("target", "paraphrase", "heldout", "neighbour", "unrelated", "empty")


def _find(world: World, concept: str) -> tuple[str, int]:
    for attribute in ("shape", "color", "fill"):
        if concept in world.classes[attribute]:
            return attribute, world.classes[attribute].index(concept)
    known = ", ".join(world.shapes + world.colors + world.fills)
    raise EraselabError(f"{concept!r} is not a tiny-world concept (known: {known})")


def concept_label(concept: str) -> str:
    """The judge's label for a tiny-world class or any of its words: "pentagram" -> "shape=star"."""
    world = load_world()
    for attribute in ("shape", "color", "fill"):
        for i, name in enumerate(world.classes[attribute]):
            if concept == name or concept in world.words_for(attribute, i, "all"):
                return f"{attribute}={name}"
    known = ", ".join(world.shapes + world.colors + world.fills)
    raise EraselabError(f"{concept!r} is not a tiny-world concept (known: {known})")


def _item(words: dict[str, str], expect: dict[str, str]) -> PromptItem:
    if "shape" in words:
        text = "a " + " ".join(words[a] for a in ("fill", "color", "shape") if a in words)
    else:
        text = "a " + " ".join(words[a] for a in ("fill", "color") if a in words) + " shape"
    return PromptItem(with_article(text), categories=tuple(f"{k}={v}" for k, v in expect.items()))


def suite_named(name: str) -> PromptSuite:
    """The suite named ``tiny:KIND:CONCEPT`` (:data:`eraselab.suites.SUITE_FAMILIES`)."""
    parts = name.split(":")
    if len(parts) != 3:
        raise EraselabError(f"tiny suites are named tiny:KIND:CONCEPT (e.g. tiny:target:star), got {name!r}")
    return tiny_suite(parts[1], parts[2])


def tiny_suite(kind: str, concept: str) -> PromptSuite:
    """The ``kind`` suite around ``concept`` (see the module docstring)."""
    world = load_world()
    if kind not in KINDS:
        raise EraselabError(f"unknown tiny suite kind {kind!r} (known: {', '.join(KINDS)})")
    attribute, index = _find(world, concept)
    # The attribute a concept is crossed with: shapes and fills with colours, colours with shapes.
    other = "color" if attribute in ("shape", "fill") else "shape"
    items: list[PromptItem] = []

    def crossed(value_index: int, word: str) -> None:
        for j, name in enumerate(world.classes[other]):
            words = {attribute: word, other: world.canonical(other, j)}
            items.append(_item(words, {other: name, attribute: world.classes[attribute][value_index]}
                               if other == "shape" else {attribute: world.classes[attribute][value_index],
                                                         other: name}))

    if kind == "target":
        crossed(index, world.canonical(attribute, index))
    elif kind == "paraphrase":
        for word in world.words_for(attribute, index, "train")[1:]:
            crossed(index, word)
    elif kind == "heldout":
        if attribute == "fill":
            raise EraselabError("fill styles have no held-out paraphrase; use 'paraphrase'")
        crossed(index, world.heldout(attribute, index))
    elif kind == "neighbour":
        for k in range(len(world.classes[attribute])):
            if k != index:
                crossed(k, world.canonical(attribute, k))
    elif kind == "unrelated":
        for attr in ("color", "fill"):
            if attr == attribute:
                continue
            for k, name in enumerate(world.classes[attr]):
                items.append(_item({attr: world.canonical(attr, k)}, {attr: name}))
    else:
        items.append(PromptItem(""))
    return PromptSuite(f"tiny:{kind}:{concept}", tuple(items), version=f"world-{world.version}",
                       source="eraselab tiny world (world.json)", license="Apache-2.0")


def erasure_groups(concept: str) -> list[dict]:
    """The erasure table's prompt groups for a tiny-world concept (``star``, ``red``, ``outlined``): efficacy on the
    training words, generality on paraphrases and held-out words (not for fills, which have none), specificity on
    every other class of the same attribute and on unrelated prompts."""
    label = concept_label(concept)
    attribute, name = label.split("=")
    groups = [{"suite": f"tiny:target:{name}", "metric": "efficacy", "concept": label},
              {"suite": f"tiny:paraphrase:{name}", "metric": "generality", "concept": label}]
    if attribute != "fill":
        groups.append({"suite": f"tiny:heldout:{name}", "metric": "generality", "concept": label})
    groups += [{"suite": f"tiny:target:{other}", "metric": "specificity"} for other in load_world().classes[attribute]
               if other != name]
    return [*groups, {"suite": f"tiny:unrelated:{name}", "metric": "specificity"}]
