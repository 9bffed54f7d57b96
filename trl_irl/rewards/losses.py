"""IRL reward losses and policy rewards: pure tensor functions, demonstrations ("demo") vs policy samples.

Notation: r is a reward model's scalar score of a whole sequence; for AIRL, l_t = f(s_t, a_t) - log pi(a_t | s_t)
is the discriminator's logit at token t, with D = sigmoid(l) = exp(f) / (exp(f) + pi).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_demo: torch.Tensor, r_sample: torch.Tensor) -> torch.Tensor:
    """Demonstration preferred over the sample for the same prompt:  L = -mean log sigmoid(r_demo - r_sample)."""
    return -F.logsigmoid(r_demo - r_sample).mean()


def gail_loss(r_demo: torch.Tensor, r_sample: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator D = sigmoid(r), demonstrations labelled 1 and samples 0 (binary cross-entropy over
    both halves):  L = 1/2 [ mean softplus(-r_demo) + mean softplus(r_sample) ]."""
    return 0.5 * (F.softplus(-r_demo).mean() + F.softplus(r_sample).mean())


def gail_reward(r: torch.Tensor) -> torch.Tensor:
    """GAIL's policy reward  -log(1 - D) = softplus(r)  (always positive; higher for demonstration-like samples)."""
    return F.softplus(r)


def airl_logits(f: torch.Tensor, policy_logps: torch.Tensor) -> torch.Tensor:
    """AIRL's per-token discriminator logit  l_t = f(s_t, a_t) - log pi(a_t | s_t)  (also its per-token reward)."""
    return f - policy_logps


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def airl_loss(
    l_demo: torch.Tensor, l_sample: torch.Tensor, mask_demo: torch.Tensor, mask_sample: torch.Tensor
) -> torch.Tensor:
    """Token-level binary cross-entropy on AIRL logits (B, T), demonstration tokens labelled 1:
    L = 1/2 [ mean_{demo tokens} softplus(-l) + mean_{sample tokens} softplus(l) ]."""
    return 0.5 * (masked_mean(F.softplus(-l_demo), mask_demo) + masked_mean(F.softplus(l_sample), mask_sample))
