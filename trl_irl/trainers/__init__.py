"""How the policy (and the reward model) is updated: thin subclasses of TRL trainers.

``ALGORITHMS`` maps the Hydra ``algo`` names to (config class, trainer class); advantages are computed in each
trainer's ``compute_advantages`` (PPO's: GAE on its critic), from the pure functions in ``trl_irl/credit``.
"""

from .algorithms import (
    ReinforcePPConfig,
    ReinforcePPTrainer,
    ReMaxTrainer,
    RLOOTokenTrainer,
    TRLRLOOConfig,
    TRLRLOOTrainer,
    UnscaledAdvantagesConfig,
)
from .online_irl import OnlineIRLConfig, OnlineIRLTrainer, OnlineRewardMixin
from .ppo import PPOConfig, PPOTrainer
from .reward_trainer import IRLRewardConfig, IRLRewardTrainer
from .token_rewards import CREDITS, TokenRewardInputs, register_credit

ALGORITHMS = {
    "grpo": (OnlineIRLConfig, OnlineIRLTrainer),
    "rloo": (TRLRLOOConfig, TRLRLOOTrainer),
    "rloo_token": (UnscaledAdvantagesConfig, RLOOTokenTrainer),
    "remax": (UnscaledAdvantagesConfig, ReMaxTrainer),
    "reinforce_pp": (ReinforcePPConfig, ReinforcePPTrainer),
    "ppo": (PPOConfig, PPOTrainer),
}


def register_algorithm(name: str, config_cls: type, trainer_cls: type):
    """Make ``algo.name=<name>`` train with ``trainer_cls`` configured by ``config_cls`` (its fields are what the
    ``algo`` group may set). The usual extension subclasses ``OnlineIRLTrainer`` and overrides ``compute_advantages``
    (the one seam every estimator goes through; ``SCALE_REWARDS`` says which TRL ``scale_rewards`` it honours); the
    CLI's ``plugins=[your_module]`` imports the module that registers it."""
    import dataclasses

    from transformers import Trainer

    if not (
        dataclasses.is_dataclass(config_cls) and isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)
    ):
        raise TypeError(
            f"register_algorithm({name!r}, ...) takes a config dataclass and a transformers Trainer "
            f"subclass (e.g. of trl_irl.OnlineIRLTrainer), got {config_cls!r} and {trainer_cls!r}"
        )
    where = lambda classes: [(c.__module__, c.__qualname__) for c in classes]  # noqa: E731 (a reload re-registers)
    if name in ALGORITHMS and where(ALGORITHMS[name]) != where((config_cls, trainer_cls)):
        raise ValueError(
            f"algo.name={name!r} is taken by {ALGORITHMS[name][1].__name__}: register yours under a new name"
        )
    ALGORITHMS[name] = (config_cls, trainer_cls)
    return trainer_cls


__all__ = [
    "ALGORITHMS",
    "register_algorithm",
    "CREDITS",
    "TokenRewardInputs",
    "register_credit",
    "IRLRewardConfig",
    "IRLRewardTrainer",
    "OnlineIRLConfig",
    "OnlineIRLTrainer",
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
