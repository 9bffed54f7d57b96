"""Prompt-OIRL: offline inverse RL for per-query prompt selection from prompting logs (arXiv 2309.06553).

A study on top of the library, behind the ``prompt-oirl`` extra (``pip install "trl-irl[prompt-oirl]"``): the core
package (trainers, pipeline) never imports LightGBM, scikit-learn or sentence-transformers.
"""

import importlib.util

from .data import PromptLogs, load_logs
from .features import EmbeddingCache, pair_features
from .reward_models import REWARD_MODELS, GBDTReward, MLPReward, make_reward_model
from .selection import best_of_n, success_rate

EXTRA = {"lightgbm": "lightgbm", "sklearn": "scikit-learn", "sentence_transformers": "sentence-transformers"}


def check_installed():
    """Name what the ``prompt-oirl`` extra would install, before any work, when part of it is missing."""
    missing = [package for module, package in EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(
            f"recipe=prompt_oirl needs {missing}, which the core install leaves out: "
            'pip install "trl-irl[prompt-oirl]" (or pip install -e ".[prompt-oirl]" in a clone)'
        )


__all__ = [
    "EmbeddingCache",
    "GBDTReward",
    "MLPReward",
    "PromptLogs",
    "REWARD_MODELS",
    "best_of_n",
    "load_logs",
    "check_installed",
    "make_reward_model",
    "pair_features",
    "success_rate",
]
