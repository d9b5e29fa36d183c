"""Loss attack (Yeom et al., "Privacy Risk in Machine Learning", CSF 2018): score = -L = mean log p(x_t)."""

from eraselab.traps.scores.stats import Score, TokenStats


def _score(target: TokenStats, reference: TokenStats | None = None):
    return target.mean_log_likelihood()  # -loss: lower loss = more likely seen


SCORE = Score("loss", "Yeom et al., CSF 2018", _score)
