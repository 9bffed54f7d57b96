"""How the policy (and the reward model) is updated: thin subclasses of TRL trainers."""

from .online_irl import OnlineIRLConfig, OnlineIRLTrainer
from .reward_trainer import IRLRewardConfig, IRLRewardTrainer

__all__ = ["IRLRewardConfig", "IRLRewardTrainer", "OnlineIRLConfig", "OnlineIRLTrainer"]
