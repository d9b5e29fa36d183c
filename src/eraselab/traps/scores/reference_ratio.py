"""Reference-model ratio (Carlini et al., USENIX Security 2021; Mireshghallah et al., EMNLP 2022).

score = -(L_target - L_ref): how much lower the suspect's loss is than that of a reference model never trained
on the documents; it removes the part of the loss that is just how predictable the text is.
"""

from eraselab.errors import EraselabError
from eraselab.traps.scores.stats import Score, TokenStats


def _score(target: TokenStats, reference: TokenStats | None = None):
    if reference is None:
        raise EraselabError("the reference-ratio score needs --reference-model")
    return target.mean_log_likelihood() - reference.mean_log_likelihood()  # = -(L_target - L_ref)


SCORE = Score("reference-ratio", "Carlini et al., USENIX Security 2021", _score, needs_reference=True)
