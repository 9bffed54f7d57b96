"""Credit assignment: advantage estimators (``advantages``) and dense token rewards (``dense``), pure functions."""

from .advantages import (
    discounted_returns,
    gae,
    group_baseline,
    grpo_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    whiten,
)
from .dense import (
    airl_rewards,
    attention_credit,
    implicit_rewards,
    kl_penalty,
    last_token_index,
    match_sequence_reward,
    redistribute_by_prefix_scores,
    terminal_rewards,
)

__all__ = [
    "discounted_returns",
    "gae",
    "group_baseline",
    "grpo_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "whiten",
    "airl_rewards",
    "attention_credit",
    "implicit_rewards",
    "kl_penalty",
    "last_token_index",
    "match_sequence_reward",
    "redistribute_by_prefix_scores",
    "terminal_rewards",
]
