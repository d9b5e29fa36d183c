"""Coverage of the trap test's 95% AUC interval (eraselab.traps.evidence.auc_with_interval) against the true AUC.

    python benchmarks/traps_interval.py [--runs 300]

Published traps score N(shift, sd), their siblings N(0, 1), so the true AUC is Phi(shift / sqrt(1 + sd^2)); for each
setting it prints how often the interval missed it (95% Wilson interval on that rate) and the interval's mean width.
A 95% interval should miss at most 5%. The settings are the ones the interval was chosen on: few traps near and far
from chance, members more spread than siblings (where a permutation interval alone fails), and 96 traps.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.judge.stats import wilson_interval
from eraselab.traps.evidence import auc_with_interval

SETTINGS = [(8, 19, 0.0, 1.0), (8, 19, 1.0, 1.0), (8, 19, 2.0, 1.0), (8, 19, 0.0, 3.0), (96, 19, 0.0, 1.0),
            (96, 19, 0.5, 1.0)]  # traps, siblings a trap, members' shift and spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    for traps, siblings, shift, spread in SETTINGS:
        rng, missed, widths = np.random.default_rng(args.seed), 0, []
        true = stats.norm.cdf(shift / np.sqrt(1 + spread ** 2))
        for run in range(args.runs):
            published = rng.normal(size=traps) * spread + shift
            interval = auc_with_interval(published.tolist(), rng.normal(size=(traps, siblings)).tolist(), seed=run)
            missed += not interval["low"] <= true <= interval["high"]
            widths.append(interval["high"] - interval["low"])
        low, high = wilson_interval(missed, args.runs)
        print(f"{traps} traps x {siblings} siblings, members N({shift:g}, {spread:g}^2): true AUC {true:.3f}, missed "
              f"{missed}/{args.runs} = {missed / args.runs:.3f} [{low:.3f}, {high:.3f}], mean width "
              f"{np.mean(widths):.3f}", flush=True)


if __name__ == "__main__":
    main()
