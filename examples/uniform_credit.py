"""A credit source of your own: each token of a completion gets an equal share of its reward.

    r_t = R / n     for the n tokens of the completion, so that  sum_t r_t = R

Decorate a function of ``TokenRewardInputs`` with ``register_credit``; it returns (B, T) token rewards, zero on
padding, summing to ``x.sequence_rewards``. Flags say what it reads (``reward_model="classifier"`` / ``"lm"``,
``needs_reference``, ``needs_policy``), and the trainers check them before training. From this file's folder:

    trl-irl plugins=[uniform_credit] credit.name=uniform
"""

import torch

from trl_irl import TokenRewardInputs, register_credit


@register_credit("uniform")
def uniform_credit(x: TokenRewardInputs) -> torch.Tensor:
    mask = x.mask.to(x.sequence_rewards.dtype)
    return x.sequence_rewards[:, None] * mask / mask.sum(1, keepdim=True).clamp(min=1)
