"""English text rules that prompts share, whatever the model: the tiny world's captions and an erasure's templates."""

from __future__ import annotations

import re

_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")


def with_article(text: str) -> str:
    """English article agreement: "a orange star" -> "an orange star"."""
    return _A_BEFORE_VOWEL.sub("an ", text)
