"""Dense token rewards for a TRL generation batch: where each credit source gets its inputs.

``token_rewards`` turns the batch TRL generated (left-padded prompt ids + right-padded completion ids) and the
sequence rewards the trainer optimises into (B, T) token rewards whose sum is that sequence reward. The maths is
in ``credit/dense.py``; this module only runs the reward model on the batch.

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
standardised like the sequence reward, per-token terms divided by the running std), and the last token carries the remainder so that sum_t r_t equals the trainer's sequence
reward (other reward functions, weights and standardisation included).
"""

from __future__ import annotations

import torch

from .. import credit as C
from ..batching import by_rows, prompt_completion_batch
from ..rewards.objectives import completion_logps

CREDITS = ("sequence", "redistribution", "attention", "implicit", "airl")
_NEEDS = {"redistribution": "classifier", "attention": "classifier", "implicit": "lm", "airl": "lm"}
CREDIT_NEEDS_REWARD_MODEL = tuple(_NEEDS)  # every credit but sequence reads the reward model's token-level scores


def check_credit(name: str, objective, has_reward_model: bool, beta: float, same_tokenizer: bool):
    """Fail before training when a credit source cannot work with this reward setup; the error says the fix."""
    if name not in CREDITS:
        raise ValueError(f"credit={name!r} is unknown: choose one of {list(CREDITS)}")
    if name == "sequence":
        return
    if not has_reward_model:
        raise ValueError(f"credit={name} reads token-level scores from a reward model, but only reward functions "
                         "were given: pass reward_model=..., or use credit=sequence")
    if objective.model_kind != _NEEDS[name]:
        fix = "reward=bt or reward=gail" if _NEEDS[name] == "classifier" else "reward=airl"
        raise ValueError(f"credit={name} needs a {_NEEDS[name]} reward model, but reward objective "
                         f"'{objective.name}' uses a {objective.model_kind}: choose {fix}")
    if name == "implicit" and beta == 0.0:
        raise ValueError("credit=implicit needs the reference policy's log-probs: set beta > 0 (the KL coefficient "
                         "loads the reference model)")
    if not same_tokenizer:
        raise ValueError(f"credit={name} scores the policy's tokens with the reward model, so both must share a "
                         "tokenizer: pass reward_processing_class=None (the policy's), or use credit=sequence")


@torch.no_grad()
def token_rewards(name: str, output: dict, sequence_rewards: torch.Tensor, *, updater=None, scale: float = 1.0,
                  shift: float = 0.0,
                  policy_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
                  attention_mix: float = 0.5, implicit_beta: float = 1.0) -> torch.Tensor:
    """(B, T) token rewards for the completions in ``output`` (TRL's generation batch), summing to
    ``sequence_rewards`` (B,). Raw reward-model scores s become the trainer's units as (s - shift) * scale (the
    running standardisation and reward weight); per-token differences and log-ratios only take the scale. The
    reward model reads the updater's ``scoring_batch_size`` rows at a time, as when it scores sequences."""
    mask = output["completion_mask"]
    if name == "sequence":
        return C.terminal_rewards(sequence_rewards, mask)
    model, objective, batch_size = updater.model, updater.objective, updater.scoring_batch_size
    batch = prompt_completion_batch(output)
    P = output["prompt_ids"].size(1)
    if name == "redistribution":
        prefix = by_rows(lambda b: objective.prefix_scores(model, b), batch, batch_size)
        prefix = (prefix[:, P:] - shift) * scale  # score after each completion token
        return C.redistribute_by_prefix_scores(prefix, mask, sequence_rewards)
    if name == "attention":
        batch["query_index"] = P + C.last_token_index(mask)  # the reward model scores the sequence at its last token
        attention = by_rows(lambda b: objective.attention_weights(model, b, b["query_index"]), batch, batch_size)
        return C.attention_credit(attention[:, P:], mask, sequence_rewards, attention_mix)
    f = by_rows(lambda b: completion_logps(model, b), batch, batch_size)
    f = f[:, P - 1:]  # log q(y_t | s_t) of the reward LM, completion tokens only
    if name == "implicit":
        dense = C.implicit_rewards(f, ref_logps, mask, implicit_beta)
    else:  # airl
        dense = C.airl_rewards(f, policy_logps, mask)
    return C.match_sequence_reward(dense * scale, mask, sequence_rewards)
