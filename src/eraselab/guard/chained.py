"""Two guards in one generation: a defence and an attack's composition recipe (:mod:`eraselab.guard.composition`)
sampled together, as an attacked, guarded model is."""

from __future__ import annotations

from dataclasses import dataclass

from eraselab.errors import EraselabError
from eraselab.requests import GenerationRequest


@dataclass(frozen=True)
class ChainedGuard:
    """A defence guard and an attack's composition recipe in one generation: the defence rewrites the request
    first; at most one of the two may change the guidance of each step."""

    defence: object
    recipe: object
    name: str = "chained"

    @property
    def label(self) -> str:
        return f"{self.defence.label} + {self.recipe.label}"

    def settings(self) -> dict:
        return {"defence": self.defence.settings(), "recipe": self.recipe.settings()}

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        return self.recipe.rewrite(self.defence.rewrite(request))

    def guidance_rule(self, pipe):
        rules = [r for r in (self.defence.guidance_rule(pipe), self.recipe.guidance_rule(pipe)) if r is not None]
        if len(rules) > 1:
            raise EraselabError(f"cannot combine the guard {self.defence.label} with a composition recipe: both "
                                "change the guidance of every step")
        return rules[0] if rules else None
