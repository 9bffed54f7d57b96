"""Credit functions against references computed another way: plain Python loops over lists, hand-worked values."""

import math
import random

import pytest
import torch

from trl_irl import credit


def random_batch(B=6, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g)
    return rewards, values, mask, lengths.tolist()


def test_gae_matches_a_plain_loop_and_ignores_padding():
    rewards, values, mask, lengths = random_batch()
    gamma, lam = 0.9, 0.8
    adv, ret = credit.gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        r, v = rewards[i, :n].tolist(), values[i, :n].tolist() + [0.0]  # V = 0 after the end
        expected = [0.0] * n
        for t in range(n):  # the definition, not the recursion: A_t = sum_k (gamma lam)^k delta_{t+k}
            expected[t] = sum((gamma * lam) ** k * (r[t + k] + gamma * v[t + k + 1] - v[t + k]) for k in range(n - t))
        assert adv[i, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert ret[i, :n].tolist() == pytest.approx([a + b for a, b in zip(expected, v)], abs=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    # garbage in padded rewards/values must not leak into valid positions
    noisy_rewards = rewards + 100 * (1 - mask)
    noisy_values = values + 100 * (1 - mask)
    assert torch.allclose(credit.gae(noisy_rewards, noisy_values, mask, gamma, lam)[0], adv)


def test_discounted_returns_is_gae_with_zero_values_and_lambda_one():
    rewards, _, mask, lengths = random_batch(seed=1)
    G = credit.discounted_returns(rewards, mask, gamma=0.7)
    for i, n in enumerate(lengths):
        r = rewards[i, :n].tolist()
        assert G[i, :n].tolist() == pytest.approx(
            [sum(0.7 ** (k - t) * r[k] for k in range(t, n)) for t in range(n)], abs=1e-5
        )
    assert torch.allclose(G, credit.gae(rewards, torch.zeros_like(rewards), mask, 0.7, 1.0)[0], atol=1e-6)


def test_rloo_baseline_excludes_the_sample_itself():
    returns, _, mask, lengths = random_batch(B=8, seed=2)
    adv = credit.rloo_advantages(returns, mask, group_size=4)
    for i in range(8):
        group = range(4 * (i // 4), 4 * (i // 4) + 4)
        for t in range(lengths[i]):
            others = [returns[j, t].item() for j in group if j != i and t < lengths[j]]
            baseline = sum(others) / len(others) if others else 0.0
            assert adv[i, t].item() == pytest.approx(returns[i, t].item() - baseline, abs=1e-5)
    # moving sample i's own return leaves its baseline unchanged: advantage moves one-for-one
    bumped = returns.clone()
    bumped[0, 0] += 5.0
    assert (credit.rloo_advantages(bumped, mask, 4)[0, 0] - adv[0, 0]).item() == pytest.approx(5.0)


def test_grpo_sequence_level_equals_trl_formula():
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, 3.0])
    adv = credit.grpo_advantages(rewards[:, None], torch.ones(6, 1), group_size=3)[:, 0]
    grouped = rewards.view(2, 3)
    mean = grouped.mean(1, keepdim=True)
    std = torch.tensor(
        [math.sqrt(sum((x - m) ** 2 for x in row) / 2) for row, m in zip(grouped.tolist(), mean[:, 0].tolist())]
    )
    assert torch.allclose(adv, ((grouped - mean) / (std[:, None] + 1e-4)).view(-1))


def test_grpo_token_level_matches_a_loop():
    returns, _, mask, lengths = random_batch(B=6, seed=6)
    adv = credit.grpo_advantages(returns, mask, group_size=3)
    for g in range(2):
        rows = range(3 * g, 3 * g + 3)
        centred = {}
        for i in rows:
            for t in range(lengths[i]):
                running = [returns[j, t].item() for j in rows if t < lengths[j]]
                centred[i, t] = returns[i, t].item() - sum(running) / len(running)
        std = math.sqrt(sum(v * v for v in centred.values()) / (len(centred) - 1))
        for (i, t), v in centred.items():
            assert adv[i, t].item() == pytest.approx(v / (std + 1e-4), abs=1e-5)


def test_group_baseline_per_position_uses_only_running_completions():
    returns = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    b = credit.group_baseline(returns, mask, 2)
    assert b.tolist() == [[3.0, 2.0, 3.0], [3.0, 0.0, 0.0]]


def test_reinforce_pp_whitens_over_valid_tokens_only():
    returns, _, mask, _ = random_batch(seed=3)
    adv = credit.reinforce_pp_advantages(returns, mask)
    valid = adv[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-4)
    assert (adv[mask == 0] == 0).all()
    with_group = credit.reinforce_pp_advantages(returns, mask, group_size=3)
    centred = returns - credit.group_baseline(returns, mask, 3)
    assert torch.allclose(with_group, credit.whiten(centred, mask))


def test_remax_subtracts_the_greedy_return_at_each_position():
    returns = torch.tensor([[3.0, 2.0, 1.0]])
    adv = credit.remax_advantages(returns, torch.ones(1, 3), torch.tensor([[1.5, 0.5]]), torch.ones(1, 2))
    assert adv.tolist() == [[1.5, 1.5, 1.0]]


def test_redistribution_sums_to_the_sequence_reward_and_matches_hand_values():
    prefix = torch.tensor([[0.5, 0.2, 0.9, 7.0], [1.0, 4.0, 9.0, 9.0]])  # row 1: 3 tokens, the 4th is padding
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    final = torch.tensor([2.0, -1.0])
    r = credit.redistribute_by_prefix_scores(prefix, mask, final)
    assert torch.allclose(r, torch.tensor([[0.5, -0.3, 0.7, 1.1], [1.0, 3.0, -5.0, 0.0]]))
    rewards, _, mask, _ = random_batch(seed=4)
    final = torch.randn(mask.size(0))
    r = credit.redistribute_by_prefix_scores(torch.randn(mask.shape), mask, final)
    assert torch.allclose(r.sum(1), final, atol=1e-5) and (r[mask == 0] == 0).all()


def test_attention_credit_spreads_the_reward_by_attention_and_keeps_the_sum():
    attention = torch.tensor([[1.0, 3.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    r = credit.attention_credit(attention, mask, torch.tensor([4.0]), mix=0.5)
    assert torch.allclose(r, torch.tensor([[0.5, 1.5, 2.0, 0.0]]))


def test_implicit_airl_and_kl_rewards():
    logps, ref, mask = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.0, -9.0]]), torch.tensor([[1, 1, 0]])
    assert credit.implicit_rewards(logps, ref, mask, beta=2.0).tolist() == [[1.0, -2.0, 0.0]]
    assert credit.airl_rewards(logps, ref, mask).tolist() == [[0.5, -1.0, 0.0]]
    assert torch.allclose(credit.kl_penalty(logps, ref, mask, coef=0.1), torch.tensor([[-0.05, 0.1, 0.0]]))


def test_match_sequence_reward_fixes_the_sum_on_the_last_token():
    rewards, _, mask, lengths = random_batch(seed=5)
    target = torch.randn(mask.size(0))
    out = credit.match_sequence_reward(rewards, mask, target)
    assert torch.allclose(out.sum(1), target, atol=1e-5)
    for i, n in enumerate(lengths):  # only the last valid token changed
        assert torch.equal(out[i, : n - 1], rewards[i, : n - 1])
    assert torch.equal(
        credit.terminal_rewards(torch.tensor([2.0]), torch.tensor([[1, 1, 0]])), torch.tensor([[0.0, 2.0, 0.0]])
    )


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_padding_never_gets_credit(estimator):
    returns, _, mask, _ = random_batch(B=8, seed=random.Random(estimator).randint(0, 99))
    returns = returns + 50 * (1 - mask)  # garbage on padding
    fn = {
        "grpo": lambda: credit.grpo_advantages(returns, mask, 4),
        "rloo": lambda: credit.rloo_advantages(returns, mask, 4),
        "reinforce_pp": lambda: credit.reinforce_pp_advantages(returns, mask, 4),
    }[estimator]
    adv = fn()
    assert (adv[mask == 0] == 0).all()
    clean = {
        "grpo": credit.grpo_advantages,
        "rloo": credit.rloo_advantages,
        "reinforce_pp": credit.reinforce_pp_advantages,
    }[estimator](returns * mask, mask, 4)
    assert torch.allclose(adv, clean, atol=1e-5)


def test_the_oracle_says_when_it_trains_with_another_credit(tmp_path):
    """The verifier is no reward model: a credit that reads one falls back to sequence for the oracle, and the run says
    so before it starts (the spec's oracle_values decides; nothing is said where the credit stays)."""
    from trl_irl.config import compose
    from trl_irl.plan import RunPlan

    plan = RunPlan(compose("recipe=toy", "algo=ppo", "credit=redistribution", output_dir=tmp_path / "a"))
    assert plan.policy_config("oracle", 8).credit == "sequence"
    assert (
        "oracle: credit=redistribution reads the learnt reward, and the oracle's reward is the verifier: the oracle "
        "trains with credit=sequence"
    ) in plan.notes
    plan = RunPlan(compose("recipe=toy", "algo=ppo", "credit=sequence", output_dir=tmp_path / "b"))
    assert not any(n.startswith("oracle:") for n in plan.notes)


def test_the_credit_check_logs_a_hand_worked_share_and_gap_and_refuses_a_changed_reward():
    """Row 0 spreads 1.0 over two tokens (last share 0.5), row 1 puts its 2.0 on its last (share 1), row 2 is empty
    (ignored)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl_irl.trainers import OnlineRewardGRPOTrainer

    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)}, args=SimpleNamespace(credit="mine"))
    rewards = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    OnlineRewardGRPOTrainer.check_credit(trainer, rewards, torch.tensor([1.0, 2.0, 0.0]), mask)
    logged = trainer._metrics["train"]
    assert logged["credit/last_token_share"] == [pytest.approx(0.75)] and logged["credit/sum_gap"] == [0.0]
    # a source that changes a sequence reward (row 1: 2.0 spread, 1.5 given) or returns another shape is refused
    with pytest.raises(ValueError, match=r"credit=mine: the token rewards of completion 1 sum to 2, its sequence "):
        OnlineRewardGRPOTrainer.check_credit(trainer, rewards, torch.tensor([1.0, 1.5, 0.0]), mask)
    with pytest.raises(ValueError, match=r"credit=mine returned token rewards of shape \(3, 2\) for completions"):
        OnlineRewardGRPOTrainer.check_credit(trainer, rewards[:, :2], torch.tensor([1.0, 2.0, 0.0]), mask)
