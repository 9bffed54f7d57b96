"""Dense token rewards: how a reward is spread over a completion's tokens. Pure tensor functions on (B, T) with a
0/1 completion ``mask`` (1 on a prefix of each row); every output is zero on padding.

The reward-model quantities they take (prefix scores, attention, log-probs) come from ``rewards/objectives.py``;
``trainers/token_rewards.py`` wires them to a trainer's batch.
"""

from __future__ import annotations

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last valid token (B,); 0 for an empty row."""
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return (positions * mask.long()).amax(dim=1)


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A sequence reward R (B,) placed on the last token:  r_t = R 1[t = last]  (the sparse baseline)."""
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    out.scatter_(1, last_token_index(mask)[:, None], rewards[:, None].to(out.dtype))
    return out * mask.to(out.dtype)


def redistribute_by_prefix_scores(prefix_scores: torch.Tensor, mask: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Reward redistribution by prefix scores:  r_t = R(x, y_<=t) - R(x, y_<t),  with R(x, y_<1) = 0 and the last
    token's prefix score replaced by the sequence reward ``final`` (B,), so that  sum_t r_t = final  exactly.

    ``prefix_scores[:, t]`` is the reward model's score of the completion cut after token t (one forward pass of a
    causal reward model gives all of them). A token is credited with how much it moved the score.
    """
    mask = mask.to(prefix_scores.dtype)
    last = last_token_index(mask)
    potential = prefix_scores * mask
    potential = potential.scatter(1, last[:, None], final[:, None].to(potential.dtype))
    previous = torch.nn.functional.pad(potential[:, :-1], (1, 0))
    return (potential - previous) * mask


def attention_credit(
    attention: torch.Tensor, mask: torch.Tensor, final: torch.Tensor, mix: float = 0.5
) -> torch.Tensor:
    """Attention-based credit (Chan et al. 2024, "Dense reward for free"): the reward model's attention from its
    scoring position over the completion's tokens, w_t = a_t / sum_k a_k, spreads a share ``mix`` of the reward:

        r_t = mix * R * w_t + (1 - mix) * R * 1[t = last]        (sum_t r_t = R)
    """
    mask = mask.to(attention.dtype)
    weights = attention.clamp(min=0) * mask
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    final = final.to(attention.dtype)
    return mix * final[:, None] * weights + (1 - mix) * terminal_rewards(final, mask)


def implicit_rewards(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Implicit token reward of a language-model reward (PRIME, Cui et al. 2025; DPO's implicit reward per token):
    r_t = beta * (log pi_theta(y_t | s_t) - log pi_ref(y_t | s_t)), pi_theta the reward LM, pi_ref the reference."""
    return beta * (logps - ref_logps) * mask.to(logps.dtype)


def airl_rewards(f: torch.Tensor, policy_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AIRL's token reward from the online discriminator:  r_t = f(s_t, a_t) - log pi(a_t | s_t)  (the logit of
    D = exp f / (exp f + pi); it sums to the AIRL sequence reward)."""
    return (f - policy_logps) * mask.to(f.dtype)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """Per-token KL penalty in the reward (k1 estimator, as in RLOO and REINFORCE++):
    r_t = -coef * (log pi(y_t | s_t) - log pi_ref(y_t | s_t))."""
    return -coef * (logps - ref_logps) * mask.to(logps.dtype)


def match_sequence_reward(token_rewards: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Shift the last token's reward so that  sum_t r_t = target  (B,): dense credit then changes *where* reward
    arrives, never the return the trainer optimises (other reward functions, weights, standardisation included)."""
    residual = target.to(token_rewards.dtype) - (token_rewards * mask.to(token_rewards.dtype)).sum(dim=1)
    return token_rewards * mask.to(token_rewards.dtype) + terminal_rewards(residual, mask)
