"""Membership scores for trap sequences, one file each, all computed from one forward pass per model.

Sign convention for every score: **higher means more likely seen in training**. Each score is a function of
:class:`~eraselab.traps.scores.stats.TokenStats` (the per-token log-probabilities and the mean and standard
deviation of log p under the model's own next-token distribution), so adding a score costs no extra forward
pass. ``reference-ratio`` also needs the reference model's statistics.
"""

from __future__ import annotations

from eraselab.registry import Registry
from eraselab.traps.scores.stats import Score

SCORES: Registry[Score] = Registry("membership scores")
SCORES.register_lazy("loss", "eraselab.traps.scores.loss:SCORE")
SCORES.register_lazy("zlib", "eraselab.traps.scores.zlib_ratio:SCORE")
SCORES.register_lazy("reference-ratio", "eraselab.traps.scores.reference_ratio:SCORE")
SCORES.register_lazy("min-k", "eraselab.traps.scores.min_k:SCORE")
SCORES.register_lazy("min-k++", "eraselab.traps.scores.min_k_plus_plus:SCORE")
