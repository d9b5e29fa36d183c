"""English text rules that prompts share, whatever the model: the tiny world's captions and an erasure's templates."""

from __future__ import annotations

import re

_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")
_AN_BEFORE_CONSONANT = re.compile(r"\ban (?=[b-df-hj-np-tv-z])")


def with_article(text: str) -> str:
    """English article agreement by the next word's first letter: "a orange star" -> "an orange star", "an solid
    shape" -> "a solid shape" (spelling, not sound: "an hour" would become "a hour")."""
    return _AN_BEFORE_CONSONANT.sub("a ", _A_BEFORE_VOWEL.sub("an ", text))
