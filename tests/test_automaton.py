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
