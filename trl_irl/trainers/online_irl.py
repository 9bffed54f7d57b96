"""Online IRL on top of TRL's GRPOTrainer: the reward model keeps learning from demonstrations vs the policy's own
samples while the policy trains on its rewards.

Hooks (each calls ``super()`` and transforms its result; no TRL method body is copied):
    _generate_and_score_completions  buffer the fresh samples; every k generation batches, update the reward model
    _calculate_rewards               stop on NaN rewards; standardise the IRL reward with running statistics
    _save_checkpoint / _load_optimizer_and_scheduler   the reward model, its optimizer, buffer and statistics
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from ..rewards.objectives import make_objective
from ..rewards.online import STATE_DIR, OnlineRewardUpdater
from ..validation import check_dataset, check_tokenizer


@dataclass
class OnlineIRLConfig(GRPOConfig):
    """GRPOConfig plus the online reward model's settings. KL to the initial (BC) policy is GRPO's ``beta``."""

    objective: str = field(default="bt", metadata={"help": "IRL loss of the online reward updates: 'bt', 'gail' or 'airl'."})
    demonstration_column: str = field(default="demonstration", metadata={
        "help": "Dataset column with a demonstration for the row's prompt; it is the positive in reward updates."})
    reward_update_every: int = field(default=1, metadata={
        "help": "Update the reward model every this many generation batches (0 freezes it)."})
    reward_update_steps: int = field(default=2, metadata={"help": "Reward-model optimizer steps per update."})
    reward_batch_size: int = field(default=32, metadata={"help": "Demonstration-sample pairs per reward step."})
    reward_learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the reward model."})
    reward_weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay of the reward model."})
    reward_max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping of the reward model."})
    reward_buffer_size: int = field(default=1024, metadata={
        "help": "Replay buffer: the most recent (prompt, demonstration, sample) triples the reward model learns from."})
    reward_standardize: bool = field(default=True, metadata={
        "help": "Standardise the IRL reward with running mean/std over all rewards seen (steady scale while the "
                "reward model moves; matters when it is combined with other reward functions)."})

    def __post_init__(self):
        super().__post_init__()
        make_objective(self.objective)  # fails early on an unknown name
        for name in ("reward_update_steps", "reward_batch_size", "reward_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reward_update_every < 0:
            raise ValueError(f"reward_update_every must be >= 0 (0 freezes the reward model), got {self.reward_update_every}")


class OnlineIRLTrainer(GRPOTrainer):
    """GRPO whose reward model learns online from demonstrations vs fresh policy samples.

    Args:
        model: the policy (a path, so TRL can load the KL reference from it when ``beta > 0``).
        reward_model: the learning reward model (``models.load_reward_model``; a causal LM for AIRL).
        args: ``OnlineIRLConfig``.
        train_dataset: columns ``prompt`` and ``args.demonstration_column``.
        processing_class: the policy's tokenizer; ``reward_processing_class`` the reward model's (default: same).
        reward_funcs: further reward functions, added to the IRL reward as in GRPO.
    """

    def __init__(self, model, reward_model, args: OnlineIRLConfig, train_dataset, processing_class,
                 reward_processing_class=None, reward_funcs=None, **kwargs):
        reward_tokenizer = reward_processing_class or processing_class
        check_tokenizer(processing_class)
        check_tokenizer(reward_tokenizer, "reward_processing_class")
        check_dataset(train_dataset, ["prompt", args.demonstration_column], "train_dataset")
        objective = make_objective(args.objective)

        def irl_reward(prompts, completions, **_):
            return self.reward_updater.rewards(prompts, completions, self._policy_for_reward()).tolist()

        super().__init__(model=model, reward_funcs=[irl_reward, *(reward_funcs or [])], args=args,
                         train_dataset=train_dataset, processing_class=processing_class, **kwargs)
        self.reward_updater = OnlineRewardUpdater(
            reward_model.to(self.accelerator.device), reward_tokenizer, objective,
            learning_rate=args.reward_learning_rate, weight_decay=args.reward_weight_decay,
            batch_size=args.reward_batch_size, steps=args.reward_update_steps, buffer_size=args.reward_buffer_size,
            max_grad_norm=args.reward_max_grad_norm, seed=args.seed)

    def _policy_for_reward(self):
        return self.accelerator.unwrap_model(self.model) if self.reward_updater.objective.needs_policy else None

    # --- hooks ------------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            ids = output["completion_ids"].masked_fill(output["completion_mask"] == 0, self.processing_class.pad_token_id)
            samples = self.processing_class.batch_decode(ids, skip_special_tokens=True)
            column = self.args.demonstration_column
            self.reward_updater.add([x["prompt"] for x in inputs], [x[column] for x in inputs], samples)
            every = self.args.reward_update_every
            if every and self.reward_updater.num_batches % every == 0:
                for key, value in self.reward_updater.update(self._policy_for_reward()).items():
                    self._metrics["train"][f"irl/{key}"].append(value)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered (B, n)
        irl = rewards[:, 0]
        if torch.isnan(irl).any():
            raise FloatingPointError(
                f"the IRL reward model returned NaN for {int(torch.isnan(irl).sum())} of {irl.numel()} completions at "
                f"step {self.state.global_step}: it has diverged. Lower reward_learning_rate (now "
                f"{self.args.reward_learning_rate}) or reward_max_grad_norm, or resume from an earlier checkpoint")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["irl/raw_reward"].append(irl.mean().item())
        if self.args.reward_standardize:
            if self.model.training:  # identical on every rank: the rewards are already gathered
                self.reward_updater.standardizer.update(irl)
            rewards[:, 0] = self.reward_updater.standardizer(irl)
        return rewards

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            self.reward_updater.save(os.path.join(folder, STATE_DIR))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.reward_updater.load(os.path.join(checkpoint, STATE_DIR))
