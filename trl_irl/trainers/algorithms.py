"""Critic-free policy-gradient algorithms: each is ``OnlineRewardGRPOTrainer`` with its own ``compute_advantages``.

All take the same reward sources (online IRL, fixed reward model, reward functions) and every token credit; their
loss is GRPO's token-level clipped surrogate, so (B, T) advantages are used as they are. ``TRLRLOOTrainer`` is TRL's
own RLOO (sequence-level ratio, KL in the reward) with our reward source; it takes ``credit=sequence`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.utils import logging
from trl import RLOOConfig, RLOOTrainer

from .. import credit as C
from .online_irl import (
    OnlineRewardFields,
    OnlineRewardGRPOConfig,
    OnlineRewardGRPOTrainer,
    OnlineRewardMixin,
    check_training_fields,
    sequence_rewards,
)
from .token_rewards import CREDITS

logger = logging.get_logger(__name__)


@dataclass
class UnscaledAdvantagesConfig(OnlineRewardGRPOConfig):
    """OnlineRewardGRPOConfig for estimators whose advantage is a plain difference of returns (RLOO, ReMax)."""

    scale_rewards: str = field(
        default="none",
        metadata={"help": "'none' only: RLOO's and ReMax's advantages are not divided by a standard deviation."},
    )


@dataclass
class ReinforcePPConfig(OnlineRewardGRPOConfig):
    """OnlineRewardGRPOConfig for REINFORCE++; its KL usually goes in the reward (``token_kl_coef``)."""

    group_baseline: bool = field(
        default=True,
        metadata={
            "help": "Subtract the per-position group mean before the global normalisation (REINFORCE++-baseline); "
            "False: plain REINFORCE++ (global normalisation only)."
        },
    )
    scale_rewards: str = field(
        default="batch", metadata={"help": "'batch' only: REINFORCE++ normalises over the whole batch."}
    )


class RLOOTokenTrainer(OnlineRewardGRPOTrainer):
    """RLOO (Ahmadian et al. 2024) with a token-level loss: A_{i,t} = G_{i,t} - mean_{j != i} G_{j,t}, no std scaling.
    Use it for token credit; ``TRLRLOOTrainer`` is TRL's sequence-level RLOO."""

    SCALE_REWARDS = ("none",)

    def compute_advantages(self, rewards, mask, output, inputs):
        returns = self.returns_to_go(rewards, mask)
        return self.across_processes(lambda g, m: C.rloo_advantages(g, m, self.num_generations), returns, mask)


class ReinforcePPTrainer(OnlineRewardGRPOTrainer):
    """REINFORCE++ (Hu 2025): A = whiten_batch(G - b), b the group mean with ``group_baseline`` else 0."""

    SCALE_REWARDS = ("batch",)

    def compute_advantages(self, rewards, mask, output, inputs):
        returns = self.returns_to_go(rewards, mask)
        group = self.num_generations if self.args.group_baseline else None
        return self.across_processes(lambda g, m: C.reinforce_pp_advantages(g, m, group), returns, mask)


class ReMaxTrainer(OnlineRewardGRPOTrainer):
    """ReMax (Li et al. 2024): the baseline is the reward of a greedy completion of the same prompt (one extra greedy
    rollout per prompt group), A_{i,t} = G_{i,t} - G^greedy_{i,t}."""

    SCALE_REWARDS = ("none",)

    def _check_setup(self, args, objective, reward_model, same_tokenizer):
        super()._check_setup(args, objective, reward_model, same_tokenizer)
        if args.use_vllm:
            logger.warning(
                "ReMaxTrainer with use_vllm=true: the sampled completions come from vLLM, but the greedy "
                "baseline rollout runs on the training model's generate() (one greedy completion per prompt)"
            )

    def compute_advantages(self, rewards, mask, output, inputs):
        return C.remax_advantages(self.returns_to_go(rewards, mask), mask, *self.greedy_returns(output, inputs))

    @torch.no_grad()
    def greedy_returns(self, output, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns of one greedy completion per prompt group, repeated to the group's rows, with their mask: per
        token (B, T') with token credit, else the whole reward (B, 1)."""
        G, n, device = self.num_generations, len(inputs), output["prompt_ids"].device
        rows = torch.arange(n) + self.accelerator.process_index * n  # global row index -> group = row // G
        group_starts = torch.cat([torch.tensor([True]), rows[1:] // G != rows[:-1] // G]).nonzero().squeeze(1)
        row_to_group = torch.cumsum(torch.zeros(n, dtype=torch.long).index_fill(0, group_starts, 1), 0) - 1
        tokenizer, pick = self.processing_class, group_starts.to(device)
        prompt_ids, prompt_mask = output["prompt_ids"][pick], output["prompt_mask"][pick]
        generated = self.accelerator.unwrap_model(self.model).generate(  # every EOS id TRL stops sampling at
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=False,
            max_new_tokens=self.max_completion_length,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        completion_ids = generated[:, prompt_ids.size(1) :]
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))
        end = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1) - 1)
        completion_mask = (torch.arange(completion_ids.size(1), device=device)[None] <= end[:, None]).long()
        greedy_inputs = [inputs[i] for i in group_starts.tolist()]
        completions = tokenizer.batch_decode(
            completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id), skip_special_tokens=True
        )
        ids_list = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
        # the same reward, its running statistics left as they are; gathered across processes (with several, each
        # holds the same number of groups when B % G == 0)
        per_func = self.score_rewards(
            greedy_inputs, [x["prompt"] for x in greedy_inputs], completions, ids_list, sampled=False
        )
        k = len(greedy_inputs)
        rewards = sequence_rewards(per_func, self.reward_weights)
        self._metrics["train"]["remax/greedy_reward"].append(rewards.mean().item())
        local = slice(self.accelerator.process_index * k, (self.accelerator.process_index + 1) * k)
        rewards = rewards[local]
        scorable = ~torch.isnan(per_func).all(1)[local, None]  # an unscorable greedy completion: baseline 0
        greedy = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }
        if self.args.token_level:
            completion_mask = completion_mask * scorable
            returns = self.returns_to_go(self.token_rewards(greedy, rewards), completion_mask)
        else:
            returns, completion_mask = rewards[:, None], scorable.to(rewards.dtype)
        index = row_to_group.to(device)
        return returns[index], completion_mask[index]


@dataclass
class TRLRLOOConfig(OnlineRewardFields, RLOOConfig):
    """TRL's RLOOConfig plus the online reward model's settings."""

    credit: str = field(
        default="sequence",
        metadata={
            "config": "credit.name",
            "help": "TRL's RLOO optimises a per-sequence ratio: only 'sequence'. For token credit use RLOOTokenTrainer "
            "(algo=rloo_token).",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_training_fields(self)
        if self.credit != "sequence":
            raise ValueError(
                f"credit={self.credit!r}: TRL's RLOO sums log-probs per sequence and cannot take token "
                "advantages. Use algo=rloo_token (token-level RLOO) for credit in "
                f"{[c for c in CREDITS if c != 'sequence']}"
            )


class TRLRLOOTrainer(OnlineRewardMixin, RLOOTrainer):
    """TRL's RLOOTrainer, unchanged, with the online-IRL (or fixed) reward source."""
