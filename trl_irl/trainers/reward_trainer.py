"""Reward learning from demonstrations vs policy samples on top of TRL's RewardTrainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig, RewardTrainer

from ..rewards.objectives import collate, make_objective, tokenize_completions
from ..trainable_layers import limit_trainable_layers
from ..validation import check_dataset, check_pad_id, check_tokenizer
from .online_irl import ObjectiveFields, check_trainable_layers

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class IRLRewardConfig(ObjectiveFields, RewardConfig):
    """RewardConfig plus the IRL objective."""

    trainable_layers: int | None = field(
        default=None,
        metadata={
            "config": "reward.online.trainable_layers",
            "help": "Train only the reward model's top this many transformer blocks and its head (None: all of it), "
            "as the online updates do (trainable_layers.limit_trainable_layers).",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_trainable_layers(self.trainable_layers, "trainable_layers")
        if self.center_rewards_coefficient is not None:  # a term of TRL's Bradley-Terry loss, which ours replaces
            raise ValueError(
                f"center_rewards_coefficient={self.center_rewards_coefficient}: the IRL objective's loss "
                f"({self.objective}) replaces TRL's, so this term of TRL's would be dropped; leave it None"
            )


@dataclass
class PairCollator:
    """Pads chosen rows then rejected rows (the order RewardTrainer uses) and adds a ``completion_mask``."""

    pad_token_id: int

    def __call__(self, examples):
        rows = [(e["chosen_ids"], e["prompt_length"]) for e in examples]
        rows += [(e["rejected_ids"], e["prompt_length"]) for e in examples]
        return collate(rows, self.pad_token_id)


class IRLRewardTrainer(RewardTrainer):
    """Learns a reward from demonstrations (``chosen``) vs samples of the current policy (``rejected``) for the
    same ``prompt``, with the loss of ``args.objective``. AIRL also needs ``policy``: its logit is f - log pi."""

    def __init__(
        self, model, args: IRLRewardConfig, train_dataset, processing_class, eval_dataset=None, policy=None, **kwargs
    ):
        self.objective = make_objective(args.objective, args.prefix_weight)
        check_tokenizer(processing_class)
        check_pad_id(model, processing_class, "model")
        check_dataset(train_dataset, PAIR_COLUMNS, "train_dataset")
        for name, data in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if data is not None and "margin" in data.column_names:  # TRL's margin enters its BT loss, not ours
                raise ValueError(
                    f"{name} has a 'margin' column: the IRL objective's loss replaces TRL's Bradley-Terry "
                    "loss with margin, so it would be ignored; remove the column"
                )
        if eval_dataset is not None:
            check_dataset(eval_dataset, PAIR_COLUMNS, "eval_dataset")
        if self.objective.needs_policy and policy is None:
            raise ValueError(f"objective '{args.objective}' needs policy=<the current policy model>")
        limit_trainable_layers(model, args.trainable_layers)
        if self.objective.model_kind == "lm":
            model.config.num_labels = 1  # RewardTrainer checks this; AIRL's score is per token, from an LM head
        super().__init__(
            model=model,
            args=args,
            train_dataset=self._tokenize(train_dataset, processing_class),
            eval_dataset=None if eval_dataset is None else self._tokenize(eval_dataset, processing_class),
            processing_class=processing_class,
            data_collator=PairCollator(processing_class.pad_token_id),
            **kwargs,
        )
        self.policy = None
        if policy is not None:
            self.policy = policy.to(self.accelerator.device).eval()
            self.policy.requires_grad_(False)

    @staticmethod
    def _tokenize(dataset, tokenizer):
        def tokenize(batch):
            chosen = tokenize_completions(tokenizer, batch["prompt"], batch["chosen"])
            rejected = tokenize_completions(tokenizer, batch["prompt"], batch["rejected"])
            return {
                "chosen_ids": [ids for ids, _ in chosen],
                "rejected_ids": [ids for ids, _ in rejected],
                "prompt_length": [n for _, n in chosen],
            }

        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "prompt_length"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.objective.pair_loss(model, inputs, self.policy)
        mode = "train" if self.model.training else "eval"
        for key in ("accuracy", "margin", "mean_reward", "prefix_loss"):  # TRL RewardTrainer's names, + ours
            if key in metrics:
                self._metrics[mode][key].append(metrics[key])
        return (loss, {}) if return_outputs else loss
