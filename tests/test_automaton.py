"""The task's exact expert log-probabilities against brute-force enumeration of every sequence."""

import itertools
import math

import numpy as np
import pytest

from trl_irl.tasks import AutomatonTask
from trl_irl.tasks.automaton import TOKEN_CHARS


def simulate_probability(task, start, tokens):
    """Probability of a token sequence by stepping the automaton in a plain loop (the generative story)."""
    probs, s, p = np.exp(task.log_probs), start, 1.0
    for a in tokens:
        p *= probs[s, a]
        s = task.next_state[s, a]
    return p


@pytest.mark.parametrize("transitions", ["random", "token"])
def test_expert_logprob_matches_enumeration(transitions):
    task = AutomatonTask(n_states=3, n_tokens=5, n_allowed=2, horizon=3, seed=7, transitions=transitions)
    for start in range(task.n_states):
        total = 0.0
        for tokens in itertools.product(range(task.n_tokens), repeat=task.horizon):
            completion = "".join(TOKEN_CHARS[a] for a in tokens)
            expected = simulate_probability(task, start, tokens)
            got = task.sequence_logprob(task.prompt(start), completion)
            assert math.exp(got) == pytest.approx(expected, abs=1e-12)
            assert task.is_success(task.prompt(start), completion) == (expected > 0)
            total += math.exp(got)
        assert total == pytest.approx(1.0, abs=1e-9)  # a distribution over all length-T sequences


def test_errors_are_non_recoverable():
    task = AutomatonTask(n_states=3, n_tokens=5, n_allowed=2, horizon=4, seed=7)
    invalid = next(a for a in range(task.n_tokens) if not np.isfinite(task.log_probs[0, a]))
    valid = next(a for a in range(task.n_tokens) if np.isfinite(task.log_probs[0, a]))
    # an invalid first token makes every later token invalid, whatever it is
    lp = task.token_logprobs("A", TOKEN_CHARS[invalid] + TOKEN_CHARS[valid] * 3)
    assert np.isneginf(lp).all()
    assert task.valid_prefix_length("A", TOKEN_CHARS[valid] + "z") == 1  # "z" is outside the vocabulary
    assert not task.is_success("A", TOKEN_CHARS[valid])  # too short


def test_demonstrations_are_valid_and_expert_logprob_per_token_is_exact():
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=5, seed=1)
    demos = task.sample_demonstrations(4000, seed=0)
    assert all(task.is_success(d["prompt"], d["completion"]) for d in demos)
    monte_carlo = np.mean([task.sequence_logprob(d["prompt"], d["completion"]) / task.horizon for d in demos])
    assert monte_carlo == pytest.approx(task.expert_logprob_per_token(), abs=0.03)


def test_bad_task_config_names_the_field():
    with pytest.raises(ValueError, match="task.n_allowed"):
        AutomatonTask(n_tokens=4, n_allowed=5)


def rare_task(**overrides):
    values = dict(n_states=8, n_tokens=8, n_allowed=3, rare_states=3, rare_prob=0.1, horizon=12, seed=4)
    return AutomatonTask(**{**values, **overrides})


def test_sub_automaton_is_entered_only_through_its_doors():
    task = rare_task()
    probs, n_main = np.exp(task.log_probs), task.n_states - task.rare_states
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert task.prompts == [task.prompt(s) for s in range(n_main)]
    for s in range(task.n_states):
        valid = np.flatnonzero(probs[s])
        into_rare = [a for a in valid if task.next_state[s, a] >= n_main]
        if s < n_main:  # one door, of probability rare_prob, and every other valid token stays in the main states
            assert len(into_rare) == 1 and probs[s, into_rare[0]] == pytest.approx(task.rare_prob)
        else:  # inside: exactly one valid token leads back out
            assert len(valid) - len(into_rare) == 1


def test_sticky_sub_automaton_exit_has_the_given_probability():
    task, plain = rare_task(rare_exit_prob=0.03), rare_task()
    probs, n_main = np.exp(task.log_probs), task.n_states - task.rare_states
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(task.next_state, plain.next_state)  # only the inside probabilities change
    np.testing.assert_array_equal(probs[:n_main], np.exp(plain.log_probs[:n_main]))
    for s in range(n_main, task.n_states):
        exits = [a for a in np.flatnonzero(probs[s]) if task.next_state[s, a] < n_main]
        assert len(exits) == 1 and probs[s, exits[0]] == pytest.approx(0.03)
        stay = np.exp(plain.log_probs[s]) * (task.next_state[s] >= n_main)  # the rest keep their proportions
        np.testing.assert_allclose(probs[s] * (task.next_state[s] >= n_main), stay / stay.sum() * 0.97, rtol=1e-6)


def test_expert_state_distribution_matches_sampled_rollouts():
    task = rare_task()
    exact = task.expert_state_distributions()  # (T, S)
    demos = task.sample_demonstrations(4000, seed=0)
    counts = np.zeros_like(exact)
    for d in demos:
        for t, s in enumerate(task.state_path(d["prompt"], d["completion"])):
            counts[t, s] += 1
    rare = slice(task.n_states - task.rare_states, None)
    empirical, expected = counts[:, rare].sum(1) / len(demos), exact[:, rare].sum(1)
    assert expected[0] == 0 and expected[-1] > 0.1  # the expert does go in, a little
    np.testing.assert_allclose(empirical, expected, atol=4 * np.sqrt(0.25 / len(demos)))
    lp = np.mean([task.token_logprobs(d["prompt"], d["completion"]).mean() for d in demos])
    assert lp == pytest.approx(task.expert_logprob_per_token(), abs=0.03)


def test_recoverable_errors_cost_one_step_each():
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=3, seed=3, recoverable=True)
    probs = np.exp(task.log_probs)
    s0 = 0
    a = int(np.flatnonzero(probs[s0])[0])
    bad = int(np.flatnonzero(probs[s0] == 0)[0])
    s1 = int(task.next_state[s0, a])
    b = int(np.flatnonzero(probs[s1])[0])
    bad1 = int(np.flatnonzero(probs[s1] == 0)[0])
    # a, then an error in s1 (state stays s1), then b, valid in s1
    completion = TOKEN_CHARS[a] + TOKEN_CHARS[bad1] + TOKEN_CHARS[b]
    lp = task.token_logprobs("A", completion)
    assert lp[0] == task.log_probs[s0, a] and lp[1] == -math.inf and lp[2] == task.log_probs[s1, b]
    assert task.invalid_count("A", completion) == 1 and not task.is_success("A", completion)
    assert task.state_path("A", completion) == [s0, s1, s1]
    strict = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=3, seed=3)
    assert list(strict.token_logprobs("A", completion)[1:]) == [-math.inf, -math.inf]
    assert strict.invalid_count("A", completion) == 2
    assert task.invalid_count("A", TOKEN_CHARS[bad]) == 3  # one error and two missing steps


def test_sub_automaton_needs_prefix_dependent_states():
    with pytest.raises(ValueError, match="task.rare_states needs task.transitions='random'"):
        rare_task(transitions="token")
    with pytest.raises(ValueError, match="task.rare_prob must be in"):
        rare_task(rare_prob=0.0)
    with pytest.raises(ValueError, match="task.rare_exit_prob must be in"):
        rare_task(rare_exit_prob=1.0)
