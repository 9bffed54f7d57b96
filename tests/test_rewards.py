"""Reward objectives on real models: batched scores against one-at-a-time references; online updates learn."""

import math

import pytest
import torch

from trl_irl.evaluation import sample_completions
from trl_irl.models import load_reward_model
from trl_irl.rewards import OnlineRewardUpdater, ReplayBuffer, RunningStandardizer, make_objective
from trl_irl.rewards.objectives import encode, tokenize_completions


def test_bt_scores_of_a_padded_batch_equal_each_sequence_alone(policy_path, tokenizer):
    model = load_reward_model(policy_path, "classifier").eval()
    torch.nn.init.normal_(model.score.weight)  # make scores non-trivial
    prompts, completions = ["A", "B", "C"], ["abc", "a", "fedcba"]
    batched = make_objective("bt").rewards(model, tokenizer, prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        [(ids, _)] = tokenize_completions(tokenizer, [p], [c])
        alone = model(input_ids=torch.tensor([ids])).logits[0, 0]  # unpadded: the score of the last token (EOS)
        assert batched[i].item() == pytest.approx(alone.item(), abs=1e-5)


def test_airl_reward_is_a_sum_of_per_token_log_ratios(policy_path, tokenizer):
    policy = load_reward_model(policy_path, "lm").eval()
    q = load_reward_model(policy_path, "lm").eval()
    prompts, completions = ["A", "D"], ["ab", "fcea"]
    objective = make_objective("airl")
    # q is a copy of the policy: every logit f - log pi is exactly 0 (the calibrated, stable start)
    assert objective.rewards(q, tokenizer, prompts, completions, policy).abs().max().item() < 1e-6
    torch.manual_seed(0)
    for p in q.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    got = objective.rewards(q, tokenizer, prompts, completions, policy)
    for i, (p, c) in enumerate(zip(prompts, completions)):  # reference: a plain loop over completion tokens
        [(ids, start)] = tokenize_completions(tokenizer, [p], [c])
        lq = torch.log_softmax(q(input_ids=torch.tensor([ids])).logits[0], -1)
        lpi = torch.log_softmax(policy(input_ids=torch.tensor([ids])).logits[0], -1)
        expected = sum((lq[t - 1, ids[t]] - lpi[t - 1, ids[t]]).item() for t in range(start, len(ids)))
        assert got[i].item() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="needs the current policy"):
        objective.rewards(q, tokenizer, prompts, completions)


def test_encode_marks_completion_tokens_and_eos(tokenizer):
    batch = encode(tokenizer, ["A", "B"], ["abc", ""])
    assert batch["completion_mask"].tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 0, 0]]  # completion + EOS
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["input_ids"][1, 1].item() == tokenizer.eos_token_id


def test_replay_buffer_keeps_the_most_recent():
    buffer = ReplayBuffer(3)
    buffer.add(["A"] * 5, ["d"] * 5, ["s0", "s1", "s2", "s3", "s4"])
    assert [x[2] for x in buffer.items] == ["s2", "s3", "s4"]
    assert {x[2] for x in buffer.sample(50, torch.Generator().manual_seed(0))} == {"s2", "s3", "s4"}


def test_running_standardizer_matches_numpy_over_all_batches():
    torch.manual_seed(0)
    batches = [torch.randn(n) * 3 + 2 for n in (5, 17, 1, 40)]
    s = RunningStandardizer()
    for b in batches:
        s.update(b)
    everything = torch.cat(batches)
    assert s.mean == pytest.approx(everything.mean().item(), abs=1e-6)
    assert s.std == pytest.approx(everything.std().item(), abs=1e-6)  # unbiased, as torch.std


@pytest.mark.parametrize("objective", ["bt", "gail", "airl"])
def test_online_update_raises_demo_reward_relative_to_samples(objective, policy_path, tokenizer, task, demos):
    obj = make_objective(objective)
    policy = load_reward_model(policy_path, "lm").eval()  # the (untrained) policy; its samples are the negatives
    model = load_reward_model(policy_path, obj.model_kind)
    updater = OnlineRewardUpdater(
        model,
        tokenizer,
        obj,
        learning_rate=3e-3,
        weight_decay=0.0,
        batch_size=32,
        steps=15,
        buffer_size=256,
        max_grad_norm=1.0,
        seed=0,
    )
    prompts = [d["prompt"] for d in demos]
    samples = sample_completions(policy, tokenizer, prompts, task.horizon, 64, seed=0)
    updater.add(prompts, [d["completion"] for d in demos], samples)

    heldout = task.sample_demonstrations(64, seed=99)
    h_prompts = [d["prompt"] for d in heldout]
    h_samples = sample_completions(policy, tokenizer, h_prompts, task.horizon, 64, seed=1)

    def gap():
        r_demo = updater.rewards(h_prompts, [d["completion"] for d in heldout], policy)
        return (r_demo - updater.rewards(h_prompts, h_samples, policy)).mean().item()

    before = gap()
    metrics = updater.update(policy)
    after = gap()
    assert after > before + 0.1, (before, after)
    assert updater.num_updates == 15 and math.isfinite(metrics["loss"])
    assert all(p.grad is None for p in updater.params)  # no gradient memory held between updates


def _first_divergence_gap(objective, model, tokenizer, prompts, demos, samples):
    """Mean (demo prefix score - sample prefix score) at the first completion offset where the two differ."""
    batch = encode(tokenizer, list(prompts) * 2, list(demos) + list(samples))
    with torch.no_grad():
        demo, sample = objective.prefix_scores(model, batch).chunk(2)
    ids_demo, ids_sample = batch["input_ids"].chunk(2)
    mask_demo, mask_sample = batch["completion_mask"].bool().chunk(2)
    first = mask_demo & mask_sample & ((ids_demo != ids_sample).cumsum(-1) == 1) & (ids_demo != ids_sample)
    return (demo - sample)[first].mean().item()


def test_prefix_pair_loss_matches_scoring_each_prefix_alone(policy_path, tokenizer):
    model = load_reward_model(policy_path, "classifier").eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight)
    prompts, demos, samples = ["AB", "C", "D"], ["abcd", "ab", "fed"], ["abdd", "fedcb", "fed"]
    objective = make_objective("bt", prefix_weight=1.0)
    batch = encode(tokenizer, prompts * 2, demos + samples)
    with torch.no_grad():
        got = objective.prefix_pair_loss(objective.scores_with_prefixes(model, batch)[1], batch).item()
    terms = []  # reference: every prefix scored alone (no padding), over offsets where both exist and differ
    for p, d, s in zip(prompts, demos, samples):
        [(ids_d, start)], [(ids_s, _)] = (
            tokenize_completions(tokenizer, [p], [d]),
            tokenize_completions(tokenizer, [p], [s]),
        )
        for t in range(start, min(len(ids_d), len(ids_s))):
            if ids_d[: t + 1] == ids_s[: t + 1]:
                continue  # identical prefixes (all of the third pair) carry nothing
            score_d = model(input_ids=torch.tensor([ids_d[: t + 1]])).logits[0, 0]
            score_s = model(input_ids=torch.tensor([ids_s[: t + 1]])).logits[0, 0]
            terms.append(-torch.nn.functional.logsigmoid(score_d - score_s).item())
    # "abcd|" vs "abdd|": offsets 2, 3, 4; "ab|" vs "fedcb|": offsets 0-2 (the shorter one ends); "fed" twice: none
    assert len(terms) == 3 + 3
    assert got == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def test_prefix_loss_trains_the_scores_of_cut_off_sequences(policy_path, tokenizer, task, demos):
    policy = load_reward_model(policy_path, "lm").eval()
    prompts = [d["prompt"] for d in demos]
    samples = sample_completions(policy, tokenizer, prompts, task.horizon, 64, seed=0)
    heldout = task.sample_demonstrations(64, seed=99)
    h_prompts, h_demos = [d["prompt"] for d in heldout], [d["completion"] for d in heldout]
    h_samples = sample_completions(policy, tokenizer, h_prompts, task.horizon, 64, seed=1)
    gains = {}
    for weight in (0.0, 1.0):
        objective = make_objective("bt", prefix_weight=weight)
        model = load_reward_model(policy_path, "classifier")
        updater = OnlineRewardUpdater(
            model,
            tokenizer,
            objective,
            learning_rate=3e-3,
            weight_decay=0.0,
            batch_size=32,
            steps=15,
            buffer_size=256,
            max_grad_norm=1.0,
            seed=0,
        )
        updater.add(prompts, [d["completion"] for d in demos], samples)
        before = _first_divergence_gap(objective, model, tokenizer, h_prompts, h_demos, h_samples)
        metrics = updater.update()
        gains[weight] = _first_divergence_gap(objective, model, tokenizer, h_prompts, h_demos, h_samples) - before
        assert ("prefix_loss" in metrics) == (weight > 0)
    # the sequence loss trains the score at the last position only (it generalises part-way to the first mistake);
    # the prefix loss trains it where the sample first leaves the demonstration (measured: 1.06 vs 2.05)
    assert gains[1.0] > 1.5 * gains[0.0] > 0, gains


def test_prefix_weight_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="already per token"):
        make_objective("airl", prefix_weight=1.0)
    with pytest.raises(ValueError, match="prefix_weight must be >= 0"):
        make_objective("bt", prefix_weight=-1.0)
