"""trl-irl: online inverse RL for LLMs on top of Hugging Face TRL."""

from .rewards import AIRLObjective, GAILObjective, OnlineRewardUpdater, RewardObjective, make_objective
from .tasks import AutomatonTask
from .trainers import (ALGORITHMS, CREDITS, IRLRewardConfig, IRLRewardTrainer, OnlineIRLConfig, OnlineIRLTrainer,
                       PPOConfig, PPOTrainer, ReinforcePPConfig, ReinforcePPTrainer, ReMaxTrainer, RLOOTokenTrainer,
                       TRLRLOOConfig, TRLRLOOTrainer)

__version__ = "0.2.0"
__all__ = ["ALGORITHMS", "AIRLObjective", "AutomatonTask", "CREDITS", "GAILObjective", "IRLRewardConfig",
           "IRLRewardTrainer", "OnlineIRLConfig", "OnlineIRLTrainer", "OnlineRewardUpdater", "PPOConfig", "PPOTrainer",
           "ReinforcePPConfig", "ReinforcePPTrainer", "ReMaxTrainer", "RLOOTokenTrainer", "RewardObjective",
           "TRLRLOOConfig", "TRLRLOOTrainer", "make_objective"]
