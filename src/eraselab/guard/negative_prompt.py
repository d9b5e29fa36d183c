"""The negative-prompt guard: generate with the concept as the negative prompt of classifier-free guidance
(eps = eps(concept) + s (eps(prompt) - eps(concept))), the baseline every erasure paper compares with.

A request that already has a negative prompt keeps it, with the concept joined after a comma.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

from eraselab.errors import EraselabError
from eraselab.requests import GenerationRequest


@dataclass(frozen=True)
class NegativePromptGuard:
    concept: str
    name: str = "negative-prompt"
    differentiable: ClassVar[bool] = True  # its negative prompt enters the loss of gradient attacks

    def __post_init__(self) -> None:
        if not self.concept.strip():
            raise EraselabError("the negative-prompt guard needs a concept (the text to steer away from)")

    @property
    def label(self) -> str:
        return f"negative-prompt({self.concept})"

    def settings(self) -> dict:
        return asdict(self)

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        negative = f"{request.negative_prompt}, {self.concept}" if request.negative_prompt else self.concept
        return replace(request, negative_prompt=negative)

    def guidance_rule(self, pipe) -> None:
        return None
