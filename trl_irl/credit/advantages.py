"""Advantage estimators: pure tensor functions, (returns or rewards, values, masks) in, advantages out.

Shapes: ``(B, T)`` per token, with a 0/1 ``mask`` that is 1 on a completion's tokens (a prefix of each row) and 0 on
padding. A sequence-level estimator is the same function on ``(B, 1)`` with an all-ones mask. Groups follow TRL's
layout: the ``group_size`` completions of one prompt are consecutive rows. Padding never receives credit: every
output is zero where ``mask`` is 0.

Per-token baselines are per position: the baseline of token t is computed from the returns at position t of the
group's other completions that are still running at t. It does not depend on the action at t (the leave-one-out
version does not depend on the sample at all), so it lowers variance without bias.
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Monte-Carlo return-to-go  G_t = sum_{k >= t} gamma^(k-t) r_k  over the completion's tokens (B, T)."""
    mask = mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), as in CleanRL's ``ppo.py``:

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)      (V = 0 after the completion's last token)
        A_t     = delta_t + gamma lambda A_{t+1}
        returns_t = A_t + V(s_t)                         (the critic's regression target)

    Returns ``(advantages, returns)``, both (B, T) and zero on padding.
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_advantage = torch.zeros_like(rewards[:, 0])
    T = rewards.size(1)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_advantage = (delta + gamma * lam * last_advantage) * mask[:, t]
        advantages[:, t] = last_advantage
    return advantages, (advantages + values) * mask


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.size(0) % group_size:
        raise ValueError(f"batch of {x.size(0)} rows is not a whole number of groups of {group_size} (num_generations)")
    return x.view(-1, group_size, *x.shape[1:])


def _reference(x: torch.Tensor, mask: torch.Tensor, dim) -> torch.Tensor:
    """One valid entry's value along ``dim`` (the largest; 0 where none is valid). Means are taken of ``x - ref`` and
    ``ref`` added back, so entries that tie give a mean equal to them exactly and a spread of exactly 0 (a plain
    float mean of ties can miss by an ulp, which a division by a small std turns into advantages of order 1)."""
    ref = torch.where(mask > 0, x, torch.full_like(x, -torch.inf)).amax(dim, keepdim=True)
    return torch.where(torch.isinf(ref), torch.zeros_like(ref), ref)


def group_baseline(
    returns: torch.Tensor, mask: torch.Tensor, group_size: int, leave_one_out: bool = False
) -> torch.Tensor:
    """Per-position mean return of the group's completions running at t:

        b_{i,t} = mean_{j in group(i), mask_{j,t}=1} G_{j,t}             (GRPO, REINFORCE++-baseline)
        b_{i,t} = mean_{j in group(i), j != i, mask_{j,t}=1} G_{j,t}     (RLOO: leave-one-out)

    Where no (other) completion of the group runs at t, the baseline is 0. Tied returns give a baseline equal to
    them exactly (``_reference``).
    """
    mask = mask.to(returns.dtype)
    g_returns, g_mask = _grouped(returns, group_size), _grouped(mask, group_size)
    ref = _reference(g_returns, g_mask, 1)
    shifted = torch.where(g_mask > 0, g_returns - ref, torch.zeros_like(g_returns))
    total, count = shifted.sum(1, keepdim=True), g_mask.sum(1, keepdim=True)
    if leave_one_out:
        total, count = total - shifted, count - g_mask
    baseline = torch.where(count > 0, ref + total / count.clamp(min=1), torch.zeros_like(total))
    return baseline.expand_as(g_returns).reshape_as(returns) * mask


def grpo_advantages(
    returns: torch.Tensor, mask: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO group normalisation (Shao et al. 2024), per position, with TRL's ``scale_rewards``:

        A_{i,t} = (G_{i,t} - b_{i,t}) / (s + eps)
        group:  s = s_g,  s_g^2 = sum_{j in g, t valid} (G_{j,t} - b_{j,t})^2 / (n_g - 1)
        batch:  s^2 = sum_{valid j,t} (G_{j,t} - mean G)^2 / (n - 1)     (the std of the returns over the batch)
        none:   s = 0 and no eps: A = G - b

    b the per-position group mean (``group_baseline``), n_g the group's number of valid tokens, n the batch's. On
    (B, 1) this is TRL's GRPO advantage bit for bit (computed with TRL's own operations, eps added to the std as TRL
    does: ``1e-4``), so the default run goes through this seam like every other; per token, s_g
    measures the spread of what is being normalised (a group whose totals tie but whose token returns differ is
    not blown up). A tied group gets advantages of exactly 0; so does a group of one (its s_g is taken as 0).
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards={scale!r}: choose 'group', 'batch' or 'none' (as TRL's GRPOConfig)")
    if returns.size(1) == 1:
        return _sequence_grpo_advantages(returns[:, 0], mask[:, 0], group_size, scale, eps)[:, None]
    mask = mask.to(returns.dtype)
    advantages = (returns - group_baseline(returns, mask, group_size)) * mask
    if scale == "group":
        g_adv, g_mask = _grouped(advantages, group_size), _grouped(mask, group_size)
        dims = tuple(range(1, g_adv.dim()))
        var = (g_adv**2).sum(dims) / (g_mask.sum(dims) - 1).clamp(min=1)
        advantages = advantages / (var.sqrt().repeat_interleave(group_size).view(-1, 1) + eps)
    elif scale == "batch":
        advantages = advantages / (masked_var(returns, mask).sqrt() + eps)
    return advantages


def _sequence_grpo_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, group_size: int, scale: str, eps: float
) -> torch.Tensor:
    """One reward per completion (B,): TRL's GRPO advantage computed op for op as ``GRPOTrainer`` does (NaN for an
    invalid row, ``nanmean`` / TRL's ``nanstd``, then NaN -> 0), so the advantages are TRL's bit for bit."""
    from trl.trainer.utils import nanstd

    rewards = torch.where(valid > 0, rewards, torch.full_like(rewards, torch.nan))
    grouped = _grouped(rewards, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size, dim=0)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = (
            nanstd(grouped, dim=1).repeat_interleave(group_size, dim=0) if group_size > 1 else torch.zeros_like(rewards)
        )
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def rloo_advantages(returns: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024):  A_{i,t} = G_{i,t} - mean_{j != i} G_{j,t}."""
    return (returns - group_baseline(returns, mask, group_size, leave_one_out=True)) * mask.to(returns.dtype)


def remax_advantages(
    returns: torch.Tensor, mask: torch.Tensor, greedy_returns: torch.Tensor, greedy_mask: torch.Tensor
) -> torch.Tensor:
    """ReMax (Li et al. 2024): the baseline is the return of the greedy completion of the same prompt,
    A_{i,t} = G_{i,t} - G^greedy_{i,t}  (0 where the greedy completion has ended). ``greedy_*`` are row-aligned with
    ``returns``; any width (they are cut or zero-padded to T)."""
    T = returns.size(1)
    greedy = (greedy_returns * greedy_mask.to(greedy_returns.dtype))[:, :T]
    greedy = torch.nn.functional.pad(greedy, (0, T - greedy.size(1)))
    return (returns - greedy) * mask.to(returns.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the valid entries of ``x`` (0 for fewer than two); ties give exactly 0."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    ref = _reference(x.flatten(), mask.flatten(), 0)
    shifted = torch.where(mask > 0, x - ref, torch.zeros_like(x))
    mean = shifted.sum() / n.clamp(min=1)
    return (((shifted - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the valid entries of the whole batch; zero on padding. The epsilon goes
    inside the square root, as OpenRLHF's and TRL's ``masked_whiten`` do: a constant batch whitens to exactly 0."""
    mask = mask.to(x.dtype)
    n = mask.sum().clamp(min=1)
    ref = _reference(x.flatten(), mask.flatten(), 0)
    shifted = torch.where(mask > 0, x - ref, torch.zeros_like(x))
    centred = shifted - shifted.sum() / n
    return centred * torch.rsqrt(masked_var(x, mask) + eps) * mask


def reinforce_pp_advantages(returns: torch.Tensor, mask: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): global batch normalisation of the return,  A = whiten(G);  with ``group_size`` the
    REINFORCE++-baseline variant subtracts the per-position group mean first,  A = whiten(G - b)."""
    if group_size:
        returns = returns - group_baseline(returns, mask, group_size)
    return whiten(returns, mask)
