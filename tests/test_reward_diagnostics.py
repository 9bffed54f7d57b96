"""Does the learned reward know a good completion from a bad one? ``evaluation.auc`` and ``evaluation.rerank``
against hand-worked examples and plain loops; the job's ``reward_diagnostics``; the saved reward loaded by TRL's
``GRPOTrainer(reward_funcs=<folder>)`` as it is, and its best-of-n."""

import itertools
import json

import numpy as np
import pytest

from tests.tiny_configs import tiny_rl_config
from trl_irl.evaluation import auc, rerank


def loop_auc(scores, labels):
    pairs = [(p, n) for p, n in itertools.product(range(len(scores)), repeat=2) if labels[p] and not labels[n]]
    return sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs) / len(pairs)


def test_auc_by_hand_by_a_loop_and_degenerate():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75  # the textbook example
    assert auc(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])) == 0.75  # a tie counts one half
    assert auc(np.array([2.0, 2.0]), np.array([1, 0])) == 0.5  # a constant reward knows nothing
    assert auc(np.array([0.3, 0.2]), np.array([1, 1])) is None and auc(np.array([0.3]), np.array([0])) is None
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60).astype(bool)  # many ties
    assert auc(scores, labels) == pytest.approx(loop_auc(scores, labels))


def test_rerank_on_a_toy_batch_worked_by_hand():
    """Two prompts, four samples each. Best of 1 is the first sample, as a random pick is: lift 0. Best of 4: prompt
    1's reward picks its one right sample (1); prompt 2's reward ties two samples for first, one right: 0.5. So 0.75
    against a random pick's (1/4 + 2/4) / 2 = 0.375."""
    scores = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=float)
    rewards = np.array([[0.9, 0.1, 0.2, 0.3], [0.5, 0.5, 0.2, 0.1]])
    found = rerank(scores, rewards)
    assert set(found["best_of"]) == {"1", "4"} and found["samples_per_prompt"] == 4 and found["prompts"] == 2
    one, four = found["best_of"]["1"], found["best_of"]["4"]
    assert (one["reward_pick"], one["random_pick"], one["lift"]["value"]) == (0.5, 0.5, 0.0)
    assert (four["reward_pick"], four["random_pick"]) == (0.75, 0.375)
    assert four["lift"]["value"] == pytest.approx(0.375)
    assert found["per_prompt"] == {"reward_pick": [1.0, 0.5], "random_pick": [0.25, 0.5]}
    low, high = four["lift"]["ci95"]
    assert low <= 0.375 <= high
    assert found["auc"] == pytest.approx(loop_auc(rewards.ravel(), scores.ravel() > 0.5))
    constant = rerank(scores, np.zeros_like(rewards))  # every sample ties: the pick is a random one
    assert constant["best_of"]["4"]["lift"]["value"] == 0.0 and constant["auc"] == 0.5
    single = rerank(np.array([[1.0], [0.0]]), np.array([[3.0], [1.0]]))  # groups of one
    assert set(single["best_of"]) == {"1"} and single["best_of"]["1"]["lift"]["value"] == 0.0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """BC and online IRL (Bradley-Terry) on a user's file, with the verifier: the run folder and its metrics."""
    from test_dataset_pipeline import SMALL, reversal_file

    import trl_irl

    folder = tmp_path_factory.mktemp("run")
    path = reversal_file(folder / "my.jsonl")
    metrics = trl_irl.run(
        "task=dataset",
        f"task.path={path}",
        "task.verifier=exact",
        "arms=[bc,grpo]",
        *SMALL,
        "eval.rerank_samples=4",
        output_dir=folder / "out",
    )
    return folder / "out", metrics


def test_the_job_reports_both_rewards_as_rerankers(finished_run):
    out, metrics = finished_run
    found = metrics["reward_diagnostics"]
    assert set(found) == {"reward_pretrain", "grpo"}
    for values in found.values():
        assert values["samples_per_prompt"] == 4 and values["prompts"] == metrics["task"]["heldout"]
        assert set(values["best_of"]) == {"1", "4"} and values["best_of"]["1"]["lift"]["value"] == 0.0
        assert 0 <= values["best_of"]["4"]["reward_pick"] <= 1 and (values["auc"] is None or 0 <= values["auc"] <= 1)
    # the two rewards rerank the same BC samples: the random pick is the same number
    assert found["reward_pretrain"]["best_of"]["4"]["random_pick"] == found["grpo"]["best_of"]["4"]["random_pick"]
    assert json.loads((out / "metrics.json").read_text())["reward_diagnostics"] == found
    assert "reward_diagnostics" in metrics["timings_s"]


def test_no_diagnostics_when_turned_off_or_without_a_verifier(tmp_path):
    from test_dataset_pipeline import SMALL, reversal_file

    import trl_irl

    path = reversal_file(tmp_path / "my.jsonl", n=30)
    off = trl_irl.run(
        "task=dataset",
        f"task.path={path}",
        "task.verifier=exact",
        "arms=[bc,grpo]",
        *SMALL,
        "eval.rerank_samples=0",
        "algo.max_steps=1",
        output_dir=tmp_path / "off",
    )
    assert "reward_diagnostics" not in off
    none = trl_irl.run(
        "task=dataset", f"task.path={path}", "arms=[bc,grpo]", *SMALL, "algo.max_steps=1", output_dir=tmp_path / "none"
    )
    assert "reward_diagnostics" not in none


def test_trl_loads_the_saved_reward_as_it_is_and_scores_what_we_score(finished_run):
    """``GRPOTrainer(reward_funcs=<final_reward>)`` builds from the folder alone (model and tokenizer), and its reward
    of a completion ending in the EOS text is ``load_reward(...).score`` of the completion; ``best_of`` picks the
    completion ``score`` ranks first."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import trl_irl

    out, _ = finished_run
    folder = out / "grpo" / "final_reward"
    saved = trl_irl.load_reward(folder)
    rows = [json.loads(line) for line in (out / "samples_bc.jsonl").read_text().splitlines()][:6]
    prompts, completions = [r["prompt"] for r in rows], [r["sample"] for r in rows]
    trainer = GRPOTrainer(
        model=str(out / "bc" / "final"),
        reward_funcs=str(folder),
        args=tiny_rl_config(
            GRPOConfig, out / "trl", per_device_train_batch_size=2, num_generations=2, max_completion_length=8
        ),
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    )
    eos = saved.tokenizer.eos_token
    ids = [saved.tokenizer(c + eos, add_special_tokens=False)["input_ids"] for c in completions]
    theirs = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, [c + eos for c in completions], ids)
    assert theirs[:, 0].tolist() == pytest.approx(saved.score(prompts, completions), abs=1e-5)
    candidates = completions[:4]
    scores = saved.score([prompts[0]] * 4, candidates)
    assert saved.best_of(prompts[0], candidates) == candidates[int(np.argmax(scores))]
