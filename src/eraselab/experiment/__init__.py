"""Experiments: a grid of models x edits (x guards) x prompt groups x seeds, judged by detectors, scored by
metrics and attacked, in a resumable run directory.

- :mod:`~eraselab.experiment.config`: the YAML file, validated into an :class:`Experiment`;
- :mod:`~eraselab.experiment.plan`: the grid's cells and the request each one makes;
- :mod:`~eraselab.experiment.images`, :mod:`~eraselab.experiment.judging`, :mod:`~eraselab.experiment.metrics`,
  :mod:`~eraselab.experiment.attacks`: the steps, each doing only what the store does not hold yet;
- :mod:`~eraselab.experiment.run`: :func:`run_experiment` and :func:`judge_run`, which run them in order.
"""

from eraselab.experiment.config import Experiment
from eraselab.experiment.parse import load_experiment, parse_experiment
from eraselab.experiment.run import judge_run, run_experiment

__all__ = ["Experiment", "judge_run", "load_experiment", "parse_experiment", "run_experiment"]
