"""trl-irl: online inverse RL for LLMs on top of Hugging Face TRL."""

from .rewards import AIRLObjective, GAILObjective, OnlineRewardUpdater, RewardObjective, make_objective
from .tasks import AutomatonTask
from .trainers import IRLRewardConfig, IRLRewardTrainer, OnlineIRLConfig, OnlineIRLTrainer

__version__ = "0.1.0"
__all__ = ["AIRLObjective", "AutomatonTask", "GAILObjective", "IRLRewardConfig", "IRLRewardTrainer",
           "OnlineIRLConfig", "OnlineIRLTrainer", "OnlineRewardUpdater", "RewardObjective", "make_objective"]
