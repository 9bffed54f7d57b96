"""Dense token rewards for a TRL generation batch: the credit sources, and where each gets its inputs.

``token_rewards`` turns the batch TRL generated (left-padded prompt ids + right-padded completion ids) and the
sequence rewards the trainer optimises into (B, T) token rewards whose sum is that sequence reward. The maths is
in ``credit/dense.py``; this module only runs the reward model on the batch. ``CREDITS`` maps each ``credit`` name
to its ``CreditSource``; ``register_credit`` adds one of yours (``examples/uniform_credit.py``).

========================  ====================================================  ================================
credit                    token reward r_t                                      needs
========================  ====================================================  ================================
sequence                  R on the last token                                   any reward
redistribution            R(x, y<=t) - R(x, y<t), prefix scores of the RM       sequence-classifier RM (bt, gail)
attention                 R spread by the RM's last-layer attention (mix)       sequence-classifier RM (bt, gail)
implicit                  beta (log q - log pi_ref), q the reward LM            LM reward (airl) and beta > 0
airl                      f - log pi, the online AIRL discriminator's logit      LM reward (airl)
========================  ====================================================  ================================

Token rewards from the reward model are in its raw units; they are put in the trainer's units (prefix scores
standardised like the sequence reward, per-token terms divided by the running std), and the last token carries the
remainder so that sum_t r_t equals the trainer's sequence reward (other reward functions, weights and
standardisation included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import credit as C
from ..batching import by_rows, prompt_completion_batch
from ..rewards.objectives import completion_logps


@dataclass
class TokenRewardInputs:
    """What a credit source reads.

    Args:
        output: TRL's generation batch (``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``).
        sequence_rewards: (B,) the trainer's sequence rewards, in its units; the token rewards must sum to them.
        updater: the online reward updater (``.model``, ``.objective``, ``.scoring_batch_size``), or None.
        scale, shift: a raw reward-model score s in the trainer's units is (s - shift) * scale.
        policy_logps, ref_logps: (B, T) log pi and log pi_ref of the completion tokens, when the source needs them.
        args: the trainer config (``attention_mix``, ``implicit_beta``, or a field of your config subclass).
    """

    output: dict
    sequence_rewards: torch.Tensor
    updater: Any = None
    scale: float = 1.0
    shift: float = 0.0
    policy_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    args: Any = None

    @property
    def mask(self) -> torch.Tensor:
        return self.output["completion_mask"]

    @property
    def prompt_length(self) -> int:
        return self.output["prompt_ids"].size(1)

    def reward_model_rows(self, fn, batch: dict | None = None) -> torch.Tensor:
        """``fn(rows)`` over the prompt + completion batch, the updater's ``scoring_batch_size`` rows at a time (as
        when it scores sequences); positions cover prompt and completion."""
        batch = prompt_completion_batch(self.output) if batch is None else batch
        return by_rows(fn, batch, self.updater.scoring_batch_size)


@dataclass(frozen=True)
class CreditSource:
    """One way to spread a sequence reward over tokens.

    Args:
        name: the ``credit`` value that selects it.
        rewards: ``TokenRewardInputs`` -> (B, T) token rewards, zero on padding, summing to ``sequence_rewards``.
        reward_model: the reward-model kind it reads (``"classifier"``: reward=bt/gail, ``"lm"``: reward=airl), or
            None when it reads no reward model (then any reward source works, reward functions included).
        needs_reference: it reads log pi_ref (the trainer needs beta > 0 to load the reference).
        needs_policy: it reads log pi of the sampling policy.
    """

    name: str
    rewards: Callable[[TokenRewardInputs], torch.Tensor]
    reward_model: str | None = None
    needs_reference: bool = False
    needs_policy: bool = False


CREDITS: dict[str, CreditSource] = {}


def register_credit(
    name: str, reward_model: str | None = None, needs_reference: bool = False, needs_policy: bool = False
):
    """Decorator: make ``credit=<name>`` spread rewards with the decorated ``fn(inputs: TokenRewardInputs)``. Every
    trainer takes it (its token rewards become returns-to-go, then each algorithm's advantages); the checks of
    ``check_credit`` follow from the flags."""
    if reward_model not in (None, "classifier", "lm"):
        raise ValueError(
            f"register_credit({name!r}): reward_model must be None, 'classifier' or 'lm', got {reward_model!r}"
        )

    def register(fn):
        if name in CREDITS and (CREDITS[name].rewards.__module__, CREDITS[name].rewards.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):  # a reload re-registers the same function
            raise ValueError(
                f"credit={name!r} is taken by {CREDITS[name].rewards.__qualname__}: register yours under a new name"
            )
        CREDITS[name] = CreditSource(name, fn, reward_model, needs_reference, needs_policy)
        return fn

    return register


# --- the built-in sources --------------------------------------------------------------------------------------
@register_credit("sequence")
def sequence_credit(x: TokenRewardInputs) -> torch.Tensor:
    return C.terminal_rewards(x.sequence_rewards, x.mask)


@register_credit("redistribution", reward_model="classifier")
def redistribution_credit(x: TokenRewardInputs) -> torch.Tensor:
    objective, model = x.updater.objective, x.updater.model
    prefix = x.reward_model_rows(lambda b: objective.prefix_scores(model, b))
    prefix = (prefix[:, x.prompt_length :] - x.shift) * x.scale  # score after each completion token
    return C.redistribute_by_prefix_scores(prefix, x.mask, x.sequence_rewards)


@register_credit("attention", reward_model="classifier")
def attention_credit(x: TokenRewardInputs) -> torch.Tensor:
    objective, model = x.updater.objective, x.updater.model
    batch = prompt_completion_batch(x.output)
    batch["query_index"] = x.prompt_length + C.last_token_index(x.mask)  # the RM scores the sequence at its last token
    attention = x.reward_model_rows(lambda b: objective.attention_weights(model, b, b["query_index"]), batch)
    return C.attention_credit(attention[:, x.prompt_length :], x.mask, x.sequence_rewards, x.args.attention_mix)


def _reward_lm_logps(x: TokenRewardInputs) -> torch.Tensor:
    """log q(y_t | s_t) of the reward LM, completion tokens only."""
    return x.reward_model_rows(lambda b: completion_logps(x.updater.model, b))[:, x.prompt_length - 1 :]


@register_credit("implicit", reward_model="lm", needs_reference=True)
def implicit_credit(x: TokenRewardInputs) -> torch.Tensor:
    dense = C.implicit_rewards(_reward_lm_logps(x), x.ref_logps, x.mask, x.args.implicit_beta)
    return C.match_sequence_reward(dense * x.scale, x.mask, x.sequence_rewards)


@register_credit("airl", reward_model="lm", needs_policy=True)
def airl_credit(x: TokenRewardInputs) -> torch.Tensor:
    dense = C.airl_rewards(_reward_lm_logps(x), x.policy_logps, x.mask)
    return C.match_sequence_reward(dense * x.scale, x.mask, x.sequence_rewards)


def check_credit(name: str, objective, *, has_reward_model: bool, beta: float, same_tokenizer: bool):
    """Fail before training when a credit source cannot work with this reward setup; the error says the fix. (An
    unknown name is the trainer config's to refuse: ``OnlineRewardGRPOConfig``.)"""
    source = CREDITS[name]
    if source.reward_model is not None:
        if not has_reward_model:
            raise ValueError(
                f"credit={name} reads token-level scores from a reward model, but only reward functions "
                "were given: pass reward_model=..., or use credit=sequence"
            )
        if objective.model_kind != source.reward_model:
            fix = "reward=bt or reward=gail" if source.reward_model == "classifier" else "reward=airl"
            raise ValueError(
                f"credit={name} needs a {source.reward_model} reward model, but reward objective "
                f"'{objective.name}' uses a {objective.model_kind}: choose {fix}"
            )
    if source.needs_reference and beta == 0.0:
        raise ValueError(
            f"credit={name} needs the reference policy's log-probs: set beta > 0 (the KL coefficient "
            "loads the reference model)"
        )
    if source.reward_model is not None and not same_tokenizer:
        raise ValueError(
            f"credit={name} scores the policy's tokens with the reward model, so both must share a "
            "tokenizer: pass reward_processing_class=None (the policy's), or use credit=sequence"
        )


@torch.no_grad()
def token_rewards(name: str, output: dict, sequence_rewards: torch.Tensor, **inputs) -> torch.Tensor:
    """(B, T) token rewards of credit source ``name`` for the completions in ``output`` (TRL's generation batch),
    summing to ``sequence_rewards`` (B,); ``inputs``: the other fields of ``TokenRewardInputs``."""
    return CREDITS[name].rewards(TokenRewardInputs(output, sequence_rewards, **inputs))
