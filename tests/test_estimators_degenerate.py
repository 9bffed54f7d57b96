"""Advantage estimators on degenerate batches (ties, constant batches, groups of one, empty rows), against the
formulas written as plain Python loops over floats (``statistics``), not the tensor code; and the trainers' seams
that pick an estimator's settings (scale_rewards, unscorable rows, aggregation, EOS ids)."""

import math
import statistics
from types import SimpleNamespace

import pytest
import torch

from trl_irl import credit
from trl_irl.trainers import ALGORITHMS, OnlineRewardGRPOTrainer
from trl_irl.trainers.algorithms import ReinforcePPTrainer, ReMaxTrainer, RLOOTokenTrainer
from trl_irl.trainers.online_irl import ROW_REWARDS
from trl_irl.trainers.ppo import PPOTrainer


def ref_whiten(values: list[float], eps: float = 1e-8) -> list[float]:
    mean = statistics.fmean(values)
    var = statistics.variance(values) if len(values) > 1 else 0.0
    return [(v - mean) / math.sqrt(var + eps) for v in values]


def ref_grpo(rewards: list[float], group: int, scale: str) -> list[float]:
    out = []
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    for g in range(0, len(rewards), group):
        rows = rewards[g : g + group]
        mean = statistics.fmean(rows)
        std = statistics.stdev(rows) if len(rows) > 1 else 0.0
        s = {"group": std, "batch": batch_std}.get(scale)
        out += [(r - mean) / (s + 1e-4) if s is not None else r - mean for r in rows]
    return out


CONSTANTS = [0.1, 1 / 3, -7.3, 1e3 + 0.7, 0.0]


@pytest.mark.parametrize("value", CONSTANTS)
def test_whiten_of_a_constant_batch_is_zero(value):
    x = torch.full((5, 7), value)
    mask = torch.ones(5, 7)
    mask[2, 3:] = 0
    assert credit.whiten(x, mask).abs().max().item() == 0.0


def test_whiten_matches_the_formula_with_eps_inside_the_root():
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(4, 6, generator=g), torch.ones(4, 6)
    mask[1, 2:] = 0
    mask[3] = 0  # an empty row
    values = [x[i, t].item() for i in range(4) for t in range(6) if mask[i, t]]
    expected = iter(ref_whiten(values))
    out = credit.whiten(x, mask)
    for i in range(4):
        for t in range(6):
            want = next(expected) if mask[i, t] else 0.0
            assert out[i, t].item() == pytest.approx(want, abs=1e-5)
    # two values barely apart: the eps inside the root keeps them small, not +-1 (the eps-on-std version's 0.7)
    tiny = credit.whiten(torch.tensor([[1.0], [1.0 + 1e-6]]), torch.ones(2, 1))
    assert tiny.abs().max().item() < 1e-2


def test_reinforce_pp_leaves_tied_groups_at_zero():
    # every group tied (different values across groups): the group baseline removes them exactly. (A float mean of
    # ties can miss by an ulp; whitening that residue with eps on the std gave advantages up to +-1.4 here.)
    g = torch.Generator().manual_seed(0)
    for group in (3, 5, 8):
        returns = torch.randn(6, generator=g).repeat_interleave(group)[:, None]
        adv = credit.reinforce_pp_advantages(returns, torch.ones_like(returns), group_size=group)
        assert adv.abs().max().item() == 0.0, group
    # per token, groups tied position by position
    tokens = torch.tensor([[0.7, 0.2, 0.1]] * 3 + [[5.1, 0.3, 0.0]] * 3)
    adv = credit.reinforce_pp_advantages(tokens, torch.ones(6, 3), group_size=3)
    assert adv.abs().max().item() == 0.0


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_sequence_level_scales_as_trl(scale):
    rewards = [1.0, 0.0, 0.5, 2.0, -1.0, 3.0, 0.2, 0.2, 0.2]  # the last group tied
    adv = credit.grpo_advantages(torch.tensor(rewards)[:, None], torch.ones(9, 1), 3, scale=scale)[:, 0]
    assert adv.tolist() == pytest.approx(ref_grpo(rewards, 3, scale), abs=1e-5)
    assert adv[6:].abs().max().item() == 0.0  # ties exactly 0, whatever the scaling


def test_grpo_groups_of_one_and_empty_rows():
    rewards = torch.tensor([0.3, -2.0, 7.0])[:, None]
    assert credit.grpo_advantages(rewards, torch.ones(3, 1), 1).abs().max().item() == 0.0
    # an empty row (mask 0) takes no part in its group's baseline or spread, and gets 0
    returns = torch.tensor([[1.0, 1.0], [3.0, 0.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    adv = credit.grpo_advantages(returns, mask, 3, scale="none")
    assert adv.tolist() == [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]


def test_grpo_batch_scale_per_token_uses_the_std_of_all_valid_returns():
    g = torch.Generator().manual_seed(1)
    returns, mask = torch.randn(6, 4, generator=g), torch.ones(6, 4)
    mask[0, 2:] = mask[4, 1:] = 0
    valid = [returns[i, t].item() for i in range(6) for t in range(4) if mask[i, t]]
    s = statistics.stdev(valid)
    unscaled = credit.grpo_advantages(returns, mask, 3, scale="none")
    assert torch.allclose(credit.grpo_advantages(returns, mask, 3, scale="batch"), unscaled / (s + 1e-4), atol=1e-6)
    with pytest.raises(ValueError, match="scale_rewards"):
        credit.grpo_advantages(returns, mask, 3, scale=True)


def test_rloo_group_of_one_has_no_baseline_and_ties_are_zero():
    returns = torch.tensor([[0.4], [-1.5]])
    assert torch.equal(credit.rloo_advantages(returns, torch.ones(2, 1), 1), returns)
    tied = torch.full((4, 1), 1 / 3)
    assert credit.rloo_advantages(tied, torch.ones(4, 1), 4).abs().max().item() == 0.0


def fake_trainer(cls, **args):
    values = dict(
        scale_rewards="group",
        token_level=True,
        multi_objective_aggregation="sum_then_normalize",
        credit="sequence",
        beta=0.0,
    )
    values.update(args)
    trainer = object.__new__(cls)
    return trainer, SimpleNamespace(**values)


@pytest.mark.parametrize(
    "cls, allowed",
    [
        (OnlineRewardGRPOTrainer, ["group", "batch", "none"]),
        (RLOOTokenTrainer, ["none"]),
        (ReMaxTrainer, ["none"]),
        (ReinforcePPTrainer, ["batch"]),
        (PPOTrainer, ["none"]),
    ],
)
def test_scale_rewards_honoured_or_refused_by_each_estimator(cls, allowed):
    for scale in ["group", "batch", "none"]:
        trainer, args = fake_trainer(cls, scale_rewards=scale)
        if scale in allowed:
            check_own(trainer, args)
        else:
            with pytest.raises(ValueError, match=f"scale_rewards={scale!r}"):
                check_own(trainer, args)


def check_own(trainer, args):
    """The trainer's own advantage-settings check (the pipeline calls it at start-up, the trainer at construction)."""
    type(trainer).check_advantage_settings(args)


def test_the_configs_default_to_the_scaling_their_estimator_takes():
    for name, spec in ALGORITHMS.items():
        if name == "rloo":
            continue  # TRL's RLOO: its own settings
        config = spec.config_cls(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none")
        assert config.scale_rewards in spec.trainer_cls.SCALE_REWARDS, name


def test_normalize_then_sum_refused_on_every_path():
    trainer, args = fake_trainer(OnlineRewardGRPOTrainer, multi_objective_aggregation="normalize_then_sum")
    for token_level in (True, False):  # sequence credit too: the default run goes through the same seam
        args.token_level = token_level
        with pytest.raises(ValueError, match="multi_objective_aggregation='normalize_then_sum'"):
            check_own(trainer, args)


def test_unscorable_rows_get_no_reward_share_and_no_advantage():
    trainer = object.__new__(OnlineRewardGRPOTrainer)
    nan = float("nan")
    per_func = torch.tensor([[1.0, nan], [nan, nan], [0.5, 2.0], [nan, 1.0]])
    trainer.reward_weights = torch.tensor([1.0, 0.5])
    trainer.accelerator = SimpleNamespace(process_index=0, num_processes=1)
    rows = [{"prompt": "p", ROW_REWARDS: r} for r in per_func]
    rewards, scorable = trainer.local_sequence_rewards(rows)
    assert all(ROW_REWARDS not in row for row in rows)  # taken out of the batch
    assert rewards.tolist() == [1.0, 0.0, 1.5, 0.5]
    assert scorable.tolist() == [True, False, True, True]
    trainer.num_generations, trainer.scale_rewards, trainer.args = 4, "none", SimpleNamespace(credit_gamma=1.0)
    adv = OnlineRewardGRPOTrainer.compute_advantages(trainer, rewards[:, None], scorable[:, None].float(), {}, [])
    # the baseline is the mean of the three scorable rows (1.0), not of four with a 0 for the unscorable one
    assert adv[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, -0.5])
