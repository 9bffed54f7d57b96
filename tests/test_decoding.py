"""Decoding-fair evaluation: pass@k against enumeration, temperature 0 is greedy, several samples a prompt, and the
bc@T* arm's temperature chosen on validation rows only."""

import itertools
import math

import numpy as np
import pytest
import torch

from trl_irl.evaluation import evaluate_arm, pass_at_k, sample_completions
from trl_irl.stages.context import open_context
from trl_irl.stages.evaluate import best_bc_temperature
from trl_irl.stages.training import (
    behaviour_cloning,
)


@pytest.mark.parametrize(
    "n, c, k", [(5, 2, 1), (5, 2, 2), (5, 2, 4), (4, 0, 2), (4, 4, 3), (6, 3, 6), (8, 1, 8), (3, 1, 1)]
)
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample(n, c, k):
    subsets = list(itertools.combinations(range(n), k))
    expected = sum(any(i < c for i in s) for s in subsets) / len(subsets)  # samples 0..c-1 are the right ones
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


@pytest.fixture(scope="module")
def automaton_bc(tmp_path_factory):
    """A BC policy on the default task, from the job itself (two epochs: sampling is not yet deterministic)."""
    from test_dataset_pipeline import composed

    from trl_irl.plan import RunPlan

    p = RunPlan(composed("bc.num_train_epochs=2", "arms=[bc]", f"output_dir={tmp_path_factory.mktemp('bc') / 'run'}"))
    p = open_context(p)
    return p, p.roles.load_policy(behaviour_cloning(p))


def test_temperature_zero_is_greedy_and_one_is_todays_sampling(automaton_bc):
    p, policy = automaton_bc
    prompts = [r["prompt"] for r in p.data.heldout[:6]]
    n = p.data.max_completion_length
    greedy = sample_completions(policy, p.tokenizer, prompts, n, 6, seed=1, temperature=0.0)
    assert greedy == sample_completions(policy, p.tokenizer, prompts, n, 6, seed=2, temperature=0.0)  # no draw
    enc = p.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids = policy.generate(**enc, do_sample=False, max_new_tokens=n, pad_token_id=p.tokenizer.pad_token_id)
    assert greedy == p.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    torch.manual_seed(3)  # temperature 1 is the draw sampling made before temperatures existed
    ids = policy.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=n,
        pad_token_id=p.tokenizer.pad_token_id,
    )
    assert sample_completions(policy, p.tokenizer, prompts, n, 6, seed=3) == p.tokenizer.batch_decode(
        ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
    )


def test_several_samples_a_prompt(automaton_bc):
    """Success is the mean of each prompt's k scores, pass@2 and pass@4 the estimator on them, and the record keeps
    the samples; one sample a prompt gives exactly today's record."""
    p, policy = automaton_bc
    rows = p.data.heldout[:10]
    common = dict(
        max_new_tokens=p.data.max_completion_length,
        reference=policy,
        reward_objective=None,
        reward_model=None,
        batch_size=64,
        seed=0,
        name="bc",
    )
    metrics, records = evaluate_arm(policy, p.tokenizer, p.plan.task, rows, num_samples=4, **common)
    scores = np.array([r["scores"] for r in records])
    assert scores.shape == (10, 4) and [r["sample"] for r in records] == [r["samples"][0] for r in records]
    assert metrics["success_rate"] == pytest.approx(scores.mean())
    assert [r["score"] for r in records] == pytest.approx(scores.mean(axis=1).tolist())
    for k in (2, 4):
        assert metrics[f"pass@{k}"] == pytest.approx(np.mean([pass_at_k(4, int(s.sum()), k) for s in scores]))
    assert metrics["num_samples"] == 40 and metrics["samples_per_prompt"] == 4 and "pass@8" not in metrics
    greedy = sample_completions(
        policy, p.tokenizer, [r["prompt"] for r in rows], p.data.max_completion_length, 64, seed=0, temperature=0.0
    )
    assert metrics["success_greedy"] == pytest.approx(
        np.mean([p.plan.task.verifier(r["prompt"], g, r) for r, g in zip(rows, greedy)])
    )
    one, records = evaluate_arm(policy, p.tokenizer, p.plan.task, rows, num_samples=1, **common)
    assert "samples" not in records[0] and "pass@2" not in one and "samples_per_prompt" not in one


def test_bc_at_its_best_temperature_is_chosen_on_validation_rows_only(automaton_bc, monkeypatch):
    import trl_irl.evaluation as evaluation

    p, policy = automaton_bc
    seen = []
    sample = evaluation.sample_completions

    def spy(model, tokenizer, prompts, *args, **kwargs):
        seen.extend(prompts)
        return sample(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(evaluation, "sample_completions", spy)
    found = best_bc_temperature(p, policy)
    assert set(seen) <= {r["prompt"] for r in p.data.validation} and seen
    assert not set(seen) & {r["prompt"] for r in p.data.heldout} - {r["prompt"] for r in p.data.validation}
    successes = {float(t): v for t, v in found["validation_success"].items()}
    assert set(successes) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert found["temperature"] == min(t for t, v in successes.items() if v == max(successes.values()))
    p.cfg["eval"]["temperatures"] = []
    assert best_bc_temperature(p, policy) is None
