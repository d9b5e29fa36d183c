"""What to erase: the target concepts, what to map them to, what to keep. Shared by every method."""

from __future__ import annotations

from dataclasses import dataclass

from eraselab.errors import EraselabError
from eraselab.text import with_article


@dataclass(frozen=True)
class EraseSpec:
    """``concepts`` are erased towards ``anchors`` (one for all, or one per concept); ``preserve`` lists concepts
    whose outputs must not move; ``templates`` expand every concept, anchor and preserved concept (``"a {}"``:
    "a star" -> anchor "a shape"). The anchor ``""`` drops the concept's words from the prompt ("a red star" ->
    "a star", "star" -> the empty prompt), as the UCE reference formats its blank guide concept into the same
    templates."""

    concepts: tuple[str, ...]
    anchors: tuple[str, ...] = ("",)
    preserve: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("{}",)

    def pairs(self) -> list[tuple[str, str]]:
        """(target prompt, anchor prompt) for every concept and template."""
        if not self.concepts:
            raise EraselabError("give at least one concept to erase")
        if len(self.anchors) not in (1, len(self.concepts)):
            raise EraselabError(f"give one anchor, or one per concept ({len(self.concepts)}), not {len(self.anchors)}")
        anchors = self.anchors * len(self.concepts) if len(self.anchors) == 1 else self.anchors
        for concept, anchor in zip(self.concepts, anchors, strict=True):
            if not concept.strip():
                raise EraselabError("a concept to erase is empty; give its words")
            if concept.strip().lower() == anchor.strip().lower():
                raise EraselabError(f"the anchor of {concept!r} is the concept itself; choose another anchor")
        return [(_clean(t.format(c)), _clean(t.format(a))) for c, a in zip(self.concepts, anchors, strict=True)
                for t in self.templates]

    def prefixes(self) -> list[tuple[str, str]]:
        """For every pair of :meth:`pairs`, the target and anchor prompts cut after the concept (after the anchor):
        "a red {}" with "star" -> ("a red star", "a red shape"); "a {} star" with "red" and a blank anchor ->
        ("a red", "a"). The closed-form methods start their keys at the end of these."""
        self.pairs()  # validates
        anchors = self.anchors * len(self.concepts) if len(self.anchors) == 1 else self.anchors
        return [(_clean(t.split("{}")[0] + c), _clean(t.split("{}")[0] + a))
                for c, a in zip(self.concepts, anchors, strict=True) for t in self.templates]

    def preserved(self) -> list[str]:
        return [_clean(t.format(p)) for p in self.preserve for t in self.templates]


def _clean(prompt: str) -> str:
    """Collapse the spaces a blank concept leaves ("a  star" -> "a star") and make the article agree with the word
    formatted after it ("a {}" with "outlined" -> "an outlined")."""
    return with_article(" ".join(prompt.split()))
