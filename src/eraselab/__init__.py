"""eraselab: erase concepts from generative models, attack the erasure, judge the result."""

__version__ = "0.1.0"
