"""Prompt-OIRL: offline inverse RL for per-query prompt selection from prompting logs (arXiv 2309.06553)."""

from .data import PromptLogs, load_logs
from .features import EmbeddingCache, pair_features
from .reward_models import REWARD_MODELS, GBDTReward, MLPReward, make_reward_model
from .selection import best_of_n, success_rate

__all__ = ["EmbeddingCache", "GBDTReward", "MLPReward", "PromptLogs", "REWARD_MODELS", "best_of_n", "load_logs",
           "make_reward_model", "pair_features", "success_rate"]
