"""One advantage seam: every trainer's advantages come from ``compute_advantages``, the default run's included. With
``credit=sequence`` GRPO's estimator gives TRL's own GRPO advantages bit for bit, on the same batch, in the trainer
(TRL's are read from ``super()._generate_and_score_completions`` before the seam replaces them)."""

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
from trl_irl.trainers import ALGORITHMS


class ComparingTrainer(OnlineRewardGRPOTrainer):
    """Keeps TRL's advantages and ours for every generation batch."""

    def _transform_scored(self, output, inputs):
        trl_advantages = output["advantages"].clone()
        calls = []
        original = self.compute_advantages
        self.compute_advantages = lambda *a: calls.append(1) or original(*a)
        try:
            output = super()._transform_scored(output, inputs)
        finally:
            del self.compute_advantages
        self.pairs = getattr(self, "pairs", []) + [(trl_advantages, output["advantages"].clone(), len(calls))]
        return output


def tied_and_unscorable(prompts, completions, **_):
    """Rewards with ties within groups, equal groups and rows no function can score (None)."""
    out = []
    for i, c in enumerate(completions):
        if i % 7 == 3:
            out.append(None)
        else:
            out.append(float(len(c) % 3) * 0.1 + (0.3 if i % 8 < 4 else 0.0))
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_sequence_advantages_are_trls_bit_for_bit(scale, tmp_path, policy_path, tokenizer, demos):
    args = tiny_rl_config(
        OnlineRewardGRPOConfig, tmp_path / "run", per_device_train_batch_size=16, seed=0, scale_rewards=scale
    )
    trainer = ComparingTrainer(
        model=policy_path,
        reward_funcs=[tied_and_unscorable, lambda completions, **_: [0.01 * len(c) for c in completions]],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": d["prompt"]} for d in demos]),
        processing_class=tokenizer,
    )
    trainer.train()
    assert len(trainer.pairs) == 2
    for trl_advantages, ours, calls in trainer.pairs:
        assert calls == 1  # the seam ran
        assert trl_advantages.abs().sum() > 0 and torch.equal(trl_advantages, ours)


def test_every_algorithm_computes_advantages_in_compute_advantages():
    """One hop: each algorithm's estimator is its ``compute_advantages`` (GRPO's the base's), and none sets
    advantages anywhere else (the base's ``_transform_scored`` is the only caller, for every algorithm)."""
    from trl_irl.trainers import TRLRLOOTrainer

    own = {}
    for name, spec in ALGORITHMS.items():
        trainer_cls = spec.trainer_cls
        if trainer_cls is TRLRLOOTrainer:  # TRL's RLOO, unchanged: its advantages are TRL's (credit=sequence only)
            continue
        assert issubclass(trainer_cls, OnlineRewardGRPOTrainer), name
        assert trainer_cls._transform_scored is OnlineRewardGRPOTrainer._transform_scored, name
        own[name] = trainer_cls.compute_advantages is not OnlineRewardGRPOTrainer.compute_advantages
    assert own == {"grpo": False, "ppo": True, "rloo_token": True, "remax": True, "reinforce_pp": True}
