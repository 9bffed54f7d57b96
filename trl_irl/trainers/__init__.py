"""How the policy (and the reward model) is updated: thin subclasses of TRL trainers.

``ALGORITHMS`` maps the Hydra ``algo`` names to (config class, trainer class); advantages are computed in each
trainer's ``compute_advantages`` (PPO: ``_transform_scored``), from the pure functions in ``trl_irl/credit``.
"""

from .algorithms import (ReinforcePPConfig, ReinforcePPTrainer, ReMaxTrainer, RLOOTokenTrainer, TRLRLOOConfig,
                         TRLRLOOTrainer, UnscaledAdvantagesConfig)
from .credit import CREDITS
from .online_irl import OnlineIRLConfig, OnlineIRLTrainer, OnlineRewardMixin
from .ppo import PPOConfig, PPOTrainer
from .reward_trainer import IRLRewardConfig, IRLRewardTrainer

ALGORITHMS = {
    "grpo": (OnlineIRLConfig, OnlineIRLTrainer),
    "rloo": (TRLRLOOConfig, TRLRLOOTrainer),
    "rloo_token": (UnscaledAdvantagesConfig, RLOOTokenTrainer),
    "remax": (UnscaledAdvantagesConfig, ReMaxTrainer),
    "reinforce_pp": (ReinforcePPConfig, ReinforcePPTrainer),
    "ppo": (PPOConfig, PPOTrainer),
}

__all__ = ["ALGORITHMS", "CREDITS", "IRLRewardConfig", "IRLRewardTrainer", "OnlineIRLConfig", "OnlineIRLTrainer",
           "OnlineRewardMixin", "PPOConfig", "PPOTrainer", "ReMaxTrainer", "RLOOTokenTrainer", "ReinforcePPConfig",
           "ReinforcePPTrainer", "TRLRLOOConfig", "TRLRLOOTrainer", "UnscaledAdvantagesConfig"]
