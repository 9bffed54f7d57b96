"""The algorithms a run can name (``algo.name``), one ``AlgorithmSpec`` each: what the job builds for it and what it
needs. The job asks the spec, never the name, so an algorithm of your own (with a critic or without) registers here
and runs through the whole job (``examples/dr_grpo.py``, ``examples/decoupled_gae.py``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

from transformers import Trainer

from ..schema import config_paths
from .algorithms import (
    ReinforcePPConfig,
    ReinforcePPTrainer,
    ReMaxTrainer,
    RLOOTokenTrainer,
    TRLRLOOConfig,
    TRLRLOOTrainer,
    UnscaledAdvantagesConfig,
)
from .online_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
from .ppo import PPOConfig, PPOTrainer
from .token_rewards import CREDITS


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm as the job sees it.

    Attributes:
        config_cls: the trainer's config dataclass; its fields are what the ``algo`` group may set.
        trainer_cls: the trainer (a TRL trainer subclass) the RL arms build with ``model``, ``args``,
            ``train_dataset``, ``processing_class`` and a reward source (``reward_model`` or ``reward_funcs``).
        critic: the trainer learns a value model: the job builds one from the BC policy (``Roles.critic``) and passes
            it as ``critic=``.
        full_models_only: why the trainer cannot train LoRA adapters and what to use instead (the refusal of
            ``peft=lora``); None: it can.
        check_settings: ``(config) -> None``, raising on settings the trainer's advantages cannot honour (which
            ``scale_rewards``), called at start-up before any model loads; None: the config's own checks suffice.
            Defaults to the trainer's ``check_advantage_settings`` (every ``OnlineRewardGRPOTrainer`` has one). The
            credits an algorithm takes are its config's to refuse (``TRLRLOOConfig``: sequence only).
    ``oracle_values`` says what the oracle arm changes in the config.
    """

    config_cls: type
    trainer_cls: type
    critic: bool = False
    full_models_only: str | None = None
    check_settings: Callable | None = None

    def __post_init__(self):
        if self.check_settings is None and issubclass(self.trainer_cls, OnlineRewardGRPOTrainer):
            object.__setattr__(self, "check_settings", self.trainer_cls.check_advantage_settings)

    def oracle_values(self, values: dict) -> dict:
        """The oracle arm's values of the config fields set from shared sections (``values``: field -> value, as
        online IRL's arm takes them): the verifier is a reward function, so no reward model's settings
        (``reward.online.*``) and, where the credit reads a reward model, sequence credit. A spec whose oracle
        differs overrides this."""
        paths = config_paths(self.config_cls)
        values = {k: v for k, v in values.items() if not paths[k].startswith("reward.online.")}
        if "credit" in values and CREDITS[values["credit"]].reward_model is not None:
            values["credit"] = "sequence"
        return values

    def __iter__(self):  # ``config_cls, trainer_cls = ALGORITHMS[name]``: the registry's entries were pairs
        warnings.warn(
            "ALGORITHMS[name] is an AlgorithmSpec: read .config_cls and .trainer_cls (unpacking it as a pair goes "
            "in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return iter((self.config_cls, self.trainer_cls))

    def __getitem__(self, index: int):  # ``ALGORITHMS[name][0]``, as above
        return tuple(self)[index]


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "grpo": AlgorithmSpec(OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer),
    "rloo": AlgorithmSpec(
        TRLRLOOConfig,
        TRLRLOOTrainer,
        full_models_only="algo=rloo is TRL's RLOOTrainer, which we run with full models only: with peft=lora use "
        "algo=rloo_token",
    ),
    "rloo_token": AlgorithmSpec(UnscaledAdvantagesConfig, RLOOTokenTrainer),
    "remax": AlgorithmSpec(UnscaledAdvantagesConfig, ReMaxTrainer),
    "reinforce_pp": AlgorithmSpec(ReinforcePPConfig, ReinforcePPTrainer),
    "ppo": AlgorithmSpec(PPOConfig, PPOTrainer, critic=True),
}


def algorithm(name: str) -> AlgorithmSpec:
    """The spec of ``algo.name=<name>``, or an error that lists the names there are."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name!r} is unknown: choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def register_algorithm(
    name: str,
    config_cls: type,
    trainer_cls: type,
    *,
    critic: bool = False,
    full_models_only: str | None = None,
    check_settings: Callable | None = None,
):
    """Make ``algo.name=<name>`` train with ``trainer_cls`` configured by ``config_cls`` (its fields are what the
    ``algo`` group may set); the keywords are ``AlgorithmSpec``'s. The usual extension subclasses
    ``OnlineRewardGRPOTrainer`` (or ``PPOTrainer``, with ``critic=True``) and overrides ``compute_advantages``, the one
    seam every estimator goes through; ``SCALE_REWARDS`` says which TRL ``scale_rewards`` it honours. The CLI's
    ``plugins=[your_module]`` imports the module that registers it. Returns ``trainer_cls``."""
    if not (
        dataclasses.is_dataclass(config_cls) and isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)
    ):
        raise TypeError(
            f"register_algorithm({name!r}, ...) takes a config dataclass and a transformers Trainer "
            f"subclass (e.g. of trl_irl.OnlineRewardGRPOTrainer), got {config_cls!r} and {trainer_cls!r}"
        )
    spec = AlgorithmSpec(config_cls, trainer_cls, critic, full_models_only, check_settings)
    taken = ALGORITHMS.get(name)
    if taken is not None and where(taken) != where(spec):  # the same classes again: a module reloaded
        raise ValueError(
            f"algo.name={name!r} is taken by {taken.trainer_cls.__name__}: register yours under a new name"
        )
    ALGORITHMS[name] = spec
    return trainer_cls


def where(spec: AlgorithmSpec) -> list[tuple[str, str]]:
    """Where a spec's classes are defined: a reloaded module's classes are new objects with the same names."""
    return [(c.__module__, c.__qualname__) for c in (spec.config_cls, spec.trainer_cls)]
