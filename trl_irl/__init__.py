"""trl-irl: online inverse RL for LLMs on top of Hugging Face TRL.

The exports load lazily (PEP 562): ``import trl_irl`` stays cheap, and a job that never trains a policy (e.g.
``recipe=prompt_oirl``) never pays TRL's import time (about 7 s).
"""

import importlib
import warnings

__version__ = "0.3.0"

_EXPORTS = {
    "cli": ["Metrics", "run"],
    "rewards": [
        "AIRLObjective",
        "BradleyTerryObjective",
        "GAILObjective",
        "OnlineRewardUpdater",
        "RewardObjective",
        "SavedReward",
        "load_reward",
        "make_objective",
        "register_objective",
    ],
    "tasks": ["AutomatonTask", "DatasetTask", "Task", "TaskData", "register_task", "register_verifier"],
    "trainers": [
        "ALGORITHMS",
        "AlgorithmSpec",
        "CREDITS",
        "IRLRewardConfig",
        "IRLRewardTrainer",
        "OnlineRewardGRPOConfig",
        "OnlineRewardGRPOTrainer",
        "PPOConfig",
        "PPOTrainer",
        "ReinforcePPConfig",
        "ReinforcePPTrainer",
        "ReMaxTrainer",
        "RLOOTokenTrainer",
        "TokenRewardInputs",
        "TRLRLOOConfig",
        "TRLRLOOTrainer",
        "register_algorithm",
        "register_credit",
    ],
    "validation": ["Refused"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


# the names these classes had before they said what they are; kept, with a warning, for one release (here and in
# trl_irl.trainers)
RENAMED = {"OnlineIRLTrainer": "OnlineRewardGRPOTrainer", "OnlineIRLConfig": "OnlineRewardGRPOConfig"}


def renamed(name: str) -> str:
    """The current name of the old name ``name``, with a ``DeprecationWarning`` for the caller's caller."""
    warnings.warn(
        f"trl_irl.{name} is now {RENAMED[name]} (the old name goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    return RENAMED[name]


def __getattr__(name):
    if name in RENAMED:
        name = renamed(name)
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module 'trl_irl' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
