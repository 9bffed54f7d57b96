"""The compounding-error study's pieces: the batched automaton equals the task's own scalar code, and each arm
moves the quantity it optimises."""

import numpy as np
import pytest
import torch

from trl_irl.compounding import arms as A
from trl_irl.compounding.env import Automaton, GRUPolicy, metrics
from trl_irl.tasks import AutomatonTask
from trl_irl.tasks.automaton import TOKEN_CHARS


@pytest.mark.parametrize("recoverable", [False, True])
def test_batched_run_equals_the_task(recoverable):
    task = AutomatonTask(
        n_states=8, n_tokens=8, n_allowed=3, rare_states=2, rare_prob=0.2, horizon=10, seed=1, recoverable=recoverable
    )
    env = Automaton(task)
    g = torch.Generator().manual_seed(0)
    starts, actions = torch.randint(env.n_starts, (64,), generator=g), torch.randint(8, (64, 10), generator=g)
    r = env.run(starts, actions)
    for i in range(64):
        prompt, completion = task.prompt(int(starts[i])), "".join(TOKEN_CHARS[a] for a in actions[i].tolist())
        np.testing.assert_array_equal(
            r.expert_logps[i].numpy(), task.token_logprobs(prompt, completion).astype(np.float32)
        )
        path = task.state_path(prompt, completion)
        assert r.states[i, : len(path)].tolist() == path
        assert (10 - int(r.valid[i].sum())) == task.invalid_count(prompt, completion)
    m = metrics(r, 10)
    assert m["invalid_per_rollout"] == pytest.approx(
        np.mean(
            [
                task.invalid_count(task.prompt(int(s)), "".join(TOKEN_CHARS[a] for a in row.tolist()))
                for s, row in zip(starts, actions)
            ]
        )
    )


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


def trained_bc(n_demos=60, horizon=16):
    torch.manual_seed(0)
    task = AutomatonTask(n_states=8, n_tokens=8, n_allowed=3, horizon=horizon, seed=0)
    env, g = Automaton(task, n_starts=1), torch.Generator().manual_seed(0)
    demos, held = env.demonstrations(n_demos, horizon, g), env.demonstrations(60, horizon, g)
    return env, g, demos, held, A.behaviour_cloning(GRUPolicy(1, env.n_actions, 16), demos, held, g)


def success(env, policy, horizon=16):
    return metrics(policy.sample(env, 3000, horizon, torch.Generator().manual_seed(1)), horizon)["success_rate"]


IRL = dict(iterations=120, learning_rate=3e-3, reward_steps=1, reward_learning_rate=3e-3)


def test_airl_reward_alone_raises_success_without_seeing_validity():
    env, g, demos, held, bc = trained_bc()
    control = A.online_irl(bc, env, demos, held, 16, "none", A.RLSettings(**IRL), g)  # no reward, no BC loss: stays
    policy = A.online_irl(bc, env, demos, held, 16, "airl", A.RLSettings(**IRL), g)
    assert success(env, policy) > success(env, control) + 0.05  # 3000 rollouts: standard error about 0.01


@pytest.mark.parametrize("objective", ["bt", "airl"])
def test_online_reward_learns_to_rank_heldout_demonstrations_above_samples(objective):
    env, g, demos, held, bc = trained_bc(n_demos=300)
    policy = A.online_irl(bc, env, demos, held, 16, objective, A.RLSettings(**IRL), g)
    # both rewards start at zero (every pair ties: separation 0); measured here: BT 0.60, AIRL 0.64 at the end
    assert np.mean(policy.separation[-30:]) > 0.55


def test_dagger_raises_success():
    env, g, demos, held, bc = trained_bc()
    policy = A.dagger(bc, env, demos, held, 16, A.RLSettings(dagger_rounds=2, dagger_rollouts=100), g)
    assert success(env, policy) > success(env, bc) + 0.05


def test_prefix_metrics_count_the_errors_that_matter():
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=4, seed=3)
    probs = np.exp(task.log_probs)
    good, bad = int(np.argmax(probs[0])), int(np.flatnonzero(probs[0] == 0)[0])
    actions = torch.tensor([[good, bad, bad, bad]])
    for recoverable, errors in [(False, 1.0), (True, None)]:
        task.recoverable = recoverable
        r = Automaton(task).run(torch.tensor([0]), actions)
        m = metrics(r.prefix(2), 2)
        assert (m["success_rate"], m["invalid_per_rollout"], m["errors_per_rollout"]) == (0.0, 1.0, 1.0)
        full = metrics(r, 4)
        # hand count: from the state after `good`, every later action is either invalid or (recoverable) judged anew
        expected = errors if errors is not None else float((~r.valid[0, 1:]).sum())
        assert full["errors_per_rollout"] == expected and full["invalid_per_rollout"] == 4 - float(r.valid.sum())


@pytest.mark.parametrize("recoverable", [False, True])
def test_errors_after_the_first_against_a_plain_loop(recoverable):
    task = AutomatonTask(n_states=6, n_tokens=6, n_allowed=3, horizon=10, seed=4, recoverable=recoverable)
    g = torch.Generator().manual_seed(0)
    starts, actions = torch.zeros(200, dtype=torch.long), torch.randint(6, (200, 10), generator=g)
    m = metrics(Automaton(task).run(starts, actions), 10)
    after, left = [], []
    for row in actions.tolist():
        lp = task.token_logprobs("A", "".join(TOKEN_CHARS[a] for a in row))
        errors = [t for t in range(10) if not np.isfinite(lp[t])]
        if not recoverable:
            errors = errors[:1]  # only the first error counts
        after.append(max(len(errors) - 1, 0))
        left.append(10 - 1 - errors[0] if errors else 0)
    assert m["errors_after_first"] == pytest.approx(np.mean(after))
    assert m["steps_after_first"] == pytest.approx(np.mean(left))
    assert (m["errors_after_first"] > 0) == recoverable  # random actions err again once off the automaton


def test_a_wider_reward_model_learning_online_beats_it_frozen_and_one_as_small_as_the_policy():
    env, g, demos, held, bc = trained_bc()
    torch.manual_seed(1)
    wide = A.behaviour_cloning(GRUPolicy(1, env.n_actions, 32), demos, held, g)

    def airl(**kw):
        return success(
            env,
            A.online_irl(bc, env, demos, held, 16, "airl", A.RLSettings(**IRL), torch.Generator().manual_seed(3), **kw),
        )

    learnt = airl(reward_init=wide)
    # measured over three generator seeds: learnt 0.77-0.81, frozen 0.68-0.69, policy-width 0.60-0.63 (3000 rollouts)
    assert learnt > airl(reward_init=wide, learn_reward=False) + 0.05
    assert learnt > airl() + 0.05
