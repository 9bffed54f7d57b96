"""How the policy (and the reward model) is updated: thin subclasses of TRL trainers.

``ALGORITHMS`` (``registry.py``) maps the Hydra ``algo`` names to an ``AlgorithmSpec`` each: config class, trainer
class, whether it trains a critic. Advantages are computed in each trainer's ``compute_advantages`` (PPO's: GAE on its
critic), from the pure functions in ``trl_irl/credit``.
"""

from .. import RENAMED, renamed
from .algorithms import (
    ReinforcePPConfig,
    ReinforcePPTrainer,
    ReMaxTrainer,
    RLOOTokenTrainer,
    TRLRLOOConfig,
    TRLRLOOTrainer,
    UnscaledAdvantagesConfig,
)
from .online_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer, OnlineRewardMixin
from .ppo import PPOConfig, PPOTrainer
from .registry import ALGORITHMS, AlgorithmSpec, algorithm, register_algorithm
from .reward_trainer import IRLRewardConfig, IRLRewardTrainer
from .token_rewards import CREDITS, TokenRewardInputs, register_credit

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "algorithm",
    "register_algorithm",
    "CREDITS",
    "TokenRewardInputs",
    "register_credit",
    "IRLRewardConfig",
    "IRLRewardTrainer",
    "OnlineRewardGRPOConfig",
    "OnlineRewardGRPOTrainer",
    "OnlineRewardMixin",
    "PPOConfig",
    "PPOTrainer",
    "ReMaxTrainer",
    "RLOOTokenTrainer",
    "ReinforcePPConfig",
    "ReinforcePPTrainer",
    "TRLRLOOConfig",
    "TRLRLOOTrainer",
    "UnscaledAdvantagesConfig",
]


def __getattr__(name):
    if name in RENAMED:  # an old name, with a warning
        return globals()[renamed(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
