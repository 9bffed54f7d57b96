"""Where the reward comes from: IRL objectives (BT, GAIL, AIRL) and the online reward updater."""

from .objectives import (
    OBJECTIVES,
    AIRLObjective,
    BradleyTerryObjective,
    GAILObjective,
    RewardObjective,
    encode,
    make_objective,
    register_objective,
)
from .online import OnlineRewardUpdater, ReplayBuffer, RunningStandardizer
from .saved import SavedReward, load_reward

__all__ = [
    "AIRLObjective",
    "BradleyTerryObjective",
    "GAILObjective",
    "OBJECTIVES",
    "OnlineRewardUpdater",
    "ReplayBuffer",
    "RewardObjective",
    "RunningStandardizer",
    "SavedReward",
    "encode",
    "load_reward",
    "make_objective",
    "register_objective",
]
