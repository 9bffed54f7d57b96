"""The compounding-error study's pieces: the batched automaton equals the task's own scalar code, and each arm
moves the quantity it optimises (issue 6, work in progress: the benchmark itself is not built yet)."""

import numpy as np
import pytest
import torch

from trl_irl.compounding import arms as A
from trl_irl.compounding.env import Automaton, GRUPolicy, metrics
from trl_irl.tasks import AutomatonTask
from trl_irl.tasks.automaton import TOKEN_CHARS


@pytest.mark.parametrize("recoverable", [False, True])
def test_batched_run_equals_the_task(recoverable):
    task = AutomatonTask(n_states=8, n_tokens=8, n_allowed=3, rare_states=2, rare_prob=0.2, horizon=10, seed=1,
                         recoverable=recoverable)
    env = Automaton(task)
    g = torch.Generator().manual_seed(0)
    starts, actions = torch.randint(env.n_starts, (64,), generator=g), torch.randint(8, (64, 10), generator=g)
    r = env.run(starts, actions)
    for i in range(64):
        prompt, completion = task.prompt(int(starts[i])), "".join(TOKEN_CHARS[a] for a in actions[i].tolist())
        np.testing.assert_array_equal(r.expert_logps[i].numpy(), task.token_logprobs(prompt, completion).astype(np.float32))
        path = task.state_path(prompt, completion)
        assert r.states[i, : len(path)].tolist() == path
        assert (10 - int(r.valid[i].sum())) == task.invalid_count(prompt, completion)
    m = metrics(r, 10)
    assert m["invalid_per_rollout"] == pytest.approx(np.mean([task.invalid_count(task.prompt(int(s)), "".join(
        TOKEN_CHARS[a] for a in row.tolist())) for s, row in zip(starts, actions)]))


def test_demonstrations_are_valid_and_follow_the_expert():
    task = AutomatonTask(n_states=6, n_tokens=6, n_allowed=2, horizon=8, seed=2)
    env = Automaton(task)
    demos = env.demonstrations(2000, 8, torch.Generator().manual_seed(0))
    assert demos.valid.all()
    assert demos.expert_logps.mean().item() == pytest.approx(task.expert_logprob_per_token(), abs=0.03)


def test_oracle_rewards_count_the_errors_that_matter():
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=3, seed=3)
    probs = np.exp(task.log_probs)
    bad = int(np.flatnonzero(probs[0] == 0)[0])
    r = Automaton(task).run(torch.tensor([0]), torch.tensor([[bad, bad, bad]]))
    assert A.oracle_rewards(r).tolist() == [[-1.0, 0.0, 0.0]]  # non-recoverable: the first error only
    task.recoverable = True
    r = Automaton(task).run(torch.tensor([0]), torch.tensor([[bad, bad, bad]]))
    assert A.oracle_rewards(r).tolist() == [[-1.0, -1.0, -1.0]]


def test_bc_then_oracle_rl_raise_success():
    torch.manual_seed(0)
    task = AutomatonTask(n_states=6, n_tokens=6, n_allowed=2, horizon=12, seed=0)
    env, g = Automaton(task), torch.Generator().manual_seed(0)
    demos, held = env.demonstrations(200, 12, g), env.demonstrations(100, 12, g)
    policy = GRUPolicy(env.n_starts, env.n_actions, 16)
    before = A.nll(policy, held).item()
    bc = A.behaviour_cloning(policy, demos, held, g)
    assert A.nll(bc, held).item() < before - 0.3
    evaluate = lambda p: metrics(p.sample(env, 2000, 12, torch.Generator().manual_seed(1)), 12)["success_rate"]  # noqa: E731
    oracle = A.oracle_rl(bc, env, 12, A.RLSettings(iterations=60), g)
    assert evaluate(oracle) > evaluate(bc) + 0.05
