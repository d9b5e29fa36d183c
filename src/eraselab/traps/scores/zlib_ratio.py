"""zlib ratio (Carlini et al., "Extracting Training Data from Large Language Models", USENIX Security 2021).

Definition used here (as in the Min-K% Prob evaluation code): score = mean log p(x_t) / zlib(x), where zlib(x)
is the length in bytes of the zlib-compressed UTF-8 text. The model's log-likelihood is normalised by how
compressible the text is, so low-entropy text does not look "seen" just for being easy.
"""

import zlib

import torch

from eraselab.traps.scores.stats import Score, TokenStats


def _score(target: TokenStats, reference: TokenStats | None = None):
    entropy = torch.tensor([len(zlib.compress(text.encode("utf-8"))) for text in target.texts], dtype=torch.float64)
    return target.mean_log_likelihood() / entropy


SCORE = Score("zlib", "Carlini et al., USENIX Security 2021", _score)
