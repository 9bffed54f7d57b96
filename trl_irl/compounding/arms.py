"""The arms of the compounding-error study, all from the same BC policy and demonstrations.

    bc              behaviour cloning: maximum likelihood on the demonstrations, early-stopped on held-out NLL
    oracle_rl       REINFORCE on the true reward (-1 at each error that counts): the ceiling
    bc_loss_only    online IRL's policy loop with the reward switched off (its BC loss and KL alone): the control
    online_irl_*    REINFORCE on a reward learnt online from demonstrations vs the policy's own samples, with no
                    access to validity: ``airl`` (token logits f - log pi, f a copy of a BC policy) or ``bt``
                    (Bradley-Terry over sequences, a per-token score summed: dense credit). The reward model may be
                    wider than the policy (``reward_init``: the BC policy of its width), as one reward model trains
                    policies of several sizes in RLHF; ``learn_reward=False`` freezes it at that initialisation
    dagger          the expert labels the states the policy itself reaches; the policy is refit on all labels

Policy updates share one REINFORCE step: returns-to-go of token rewards plus a per-token KL penalty to BC,
a per-position batch-mean baseline (``policy_gradient_step``). Losses and estimators are the library's pure functions;
the reward learns as every reward here does: its objective's loss (``rewards/objectives.py``), one
``rewards/online.reward_step`` per update.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..credit.advantages import discounted_returns
from ..credit.dense import kl_penalty
from ..rewards.losses import airl_logits, masked_mean
from ..rewards.objectives import make_objective
from ..rewards.online import reward_step
from ..shared_base import trainable_parameters
from .env import Automaton, GRUPolicy, Rollouts, clone


@dataclass
class RLSettings:
    iterations: int = 300
    batch: int = 64
    learning_rate: float = 1e-3
    beta: float = 0.05  # KL to BC, per token
    gamma: float = 1.0
    max_grad_norm: float = 1.0
    reward_steps: int = 2  # discriminator / reward-model steps per policy step
    reward_learning_rate: float = 1e-3
    reward_weight_decay: float = 1e-4
    reward_clip: float = 5.0
    reward_gate: float = 0.5  # held-out pairwise accuracy the reward needs before the policy follows it
    bc_weight: float = 0.0  # demonstrations' NLL added to online IRL's policy loss
    dagger_rounds: int = 5
    dagger_rollouts: int = 200


def nll(policy: GRUPolicy, data: Rollouts) -> torch.Tensor:
    return -policy.logps(data.starts, data.actions).mean()


def behaviour_cloning(
    policy: GRUPolicy,
    demos: Rollouts,
    heldout: Rollouts,
    generator: torch.Generator,
    learning_rate: float = 3e-3,
    batch: int = 64,
    max_epochs: int = 300,
    patience: int = 5,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> GRUPolicy:
    """Minimise the NLL of the demonstrated actions (or of ``labels`` at the demonstrated prefixes where ``mask``,
    for DAgger); keep the weights with the best held-out NLL."""
    targets = demos.actions if labels is None else labels
    mask = torch.ones_like(targets, dtype=torch.float32) if mask is None else mask.float()
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    best, best_state, waited = float("inf"), clone(policy).state_dict(), 0
    for _ in range(max_epochs):
        order = torch.randperm(len(demos.starts), generator=generator)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            logp = policy(demos.starts[idx], demos.actions[idx]).gather(-1, targets[idx][..., None]).squeeze(-1)
            optimizer.zero_grad()
            (-masked_mean(logp, mask[idx])).backward()
            optimizer.step()
        with torch.no_grad():
            loss = nll(policy, heldout).item()
        if loss < best - 1e-4:
            best, best_state, waited = loss, clone(policy).state_dict(), 0
        else:
            waited += 1
            if waited >= patience:
                break
    policy.load_state_dict(best_state)
    return policy


def policy_gradient_step(
    policy,
    optimizer,
    bc,
    rollouts: Rollouts,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    s: RLSettings,
    demos: Rollouts | None = None,
    logps: torch.Tensor | None = None,
) -> float:
    """REINFORCE with a per-position baseline:  A_t = G_t - mean_batch G_t,  G_t the return-to-go of
    r_t - beta (log pi - log pi_BC);  loss = -mean_t A_t log pi(a_t | a_<t)  [+ bc_weight * NLL(demos)].
    ``logps``: the rollouts' log pi with its graph, when the caller has it already."""
    logps = policy.logps(rollouts.starts, rollouts.actions) if logps is None else logps
    with torch.no_grad():
        rewards = token_rewards + kl_penalty(logps, bc.logps(rollouts.starts, rollouts.actions), mask, s.beta)
        returns = discounted_returns(rewards, mask, s.gamma)
        baseline = (returns * mask).sum(0) / mask.sum(0).clamp(min=1)
        advantages = (returns - baseline) * mask
    loss = -masked_mean(advantages * logps, mask)
    if demos is not None and s.bc_weight:
        loss = loss + s.bc_weight * nll(policy, demos)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
    optimizer.step()
    return loss.item()


def oracle_rewards(rollouts: Rollouts) -> torch.Tensor:
    """-1 at every error that counts: each invalid action (recoverable) or the first one (non-recoverable)."""
    return -((~rollouts.valid) & rollouts.alive).float()


def oracle_rl(bc: GRUPolicy, env: Automaton, horizon: int, s: RLSettings, generator: torch.Generator) -> GRUPolicy:
    policy = clone(bc)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate)
    for _ in range(s.iterations):
        rollouts = policy.sample(env, s.batch, horizon, generator)
        policy_gradient_step(policy, optimizer, bc, rollouts, oracle_rewards(rollouts), rollouts.alive.float(), s)
    return policy


class SequenceScorer(torch.nn.Module):
    """Bradley-Terry reward model: a per-token score g_t from a GRU trunk (copied from BC), summed over the sequence;
    its head starts at zero, so the first rewards are 0."""

    def __init__(self, bc: GRUPolicy):
        super().__init__()
        trunk = clone(bc)
        self.embed, self.gru, self.n_actions = trunk.embed, trunk.gru, trunk.n_actions
        self.head = torch.nn.Linear(self.gru.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, starts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """g_t for each action (N, T): read after the action is taken (the start token, then the actions)."""
        tokens = torch.cat([(starts + self.n_actions)[:, None], actions], dim=1)
        out, _ = self.gru(self.embed(tokens))
        return self.head(out[:, 1:]).squeeze(-1)


def online_irl(
    bc: GRUPolicy,
    env: Automaton,
    demos: Rollouts,
    heldout: Rollouts,
    horizon: int,
    objective: str,
    s: RLSettings,
    generator: torch.Generator,
    reward_init: GRUPolicy | None = None,
    learn_reward: bool = True,
) -> GRUPolicy:
    """Alternate ``reward_steps`` reward updates (demonstrations vs fresh policy samples) with one policy step on
    the learnt token rewards. The learner never sees validity: every token of a sample is scored and trained on.

    The reward model starts from ``reward_init`` (default ``bc``): AIRL's f is a copy of it, so with ``bc`` the first
    logits f - log pi are exactly 0, and with a wider BC policy they are log pi_wide - log pi; Bradley-Terry takes its
    trunk under a zero head (first rewards 0). ``learn_reward=False`` skips the reward updates: the control that
    shows what learning online adds to the initial reward.

    Gate: the policy step uses the learnt reward only while it ranks held-out demonstrations above the fresh samples
    (pairwise accuracy >= ``s.reward_gate``); a reward that only memorised its training demonstrations would
    otherwise pull the policy anywhere. ``s.bc_weight`` adds the demonstrations' NLL to every policy step.
    ``objective="none"`` is the control: the same loop with the reward switched off (BC loss and KL alone).
    The held-out separation of every iteration is kept in ``policy.separation``."""
    if objective == "none":
        return _reward_free_loop(bc, env, demos, horizon, s, generator)
    policy = clone(bc)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate)
    init = bc if reward_init is None else reward_init
    reward = clone(init) if objective == "airl" else SequenceScorer(init)
    reward_optimizer = torch.optim.AdamW(
        reward.parameters(), lr=s.reward_learning_rate, weight_decay=s.reward_weight_decay
    )
    ones = torch.ones(s.batch, horizon)

    def token_rewards(starts: torch.Tensor, actions: torch.Tensor, policy_logps: torch.Tensor) -> torch.Tensor:
        if objective == "airl":  # l_t = f(s_t, a_t) - log pi(a_t | s_t), f = log-softmax of the discriminator
            return airl_logits(reward.logps(starts, actions), policy_logps)
        return reward(starts, actions)

    def with_samples(
        data: Rollouts, rollouts: Rollouts, sample_logps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rewards of a batch drawn from ``data`` and of the samples, in one forward of the reward model."""
        demo = draw(data, s.batch, generator)
        with torch.no_grad():
            demo_logps = policy.logps(demo.starts, demo.actions)
        both = token_rewards(
            torch.cat([demo.starts, rollouts.starts]),
            torch.cat([demo.actions, rollouts.actions]),
            torch.cat([demo_logps, sample_logps]),
        )
        return both[: s.batch], both[s.batch :]

    # the library's reward learning: the objective's loss, one shared optimizer step (rewards/online.reward_step)
    reward_objective, params = make_objective(objective), trainable_parameters(reward)
    pair_batch = {"completion_mask": torch.ones(2 * s.batch, horizon + 1)}  # AIRL's token mask: every token counts

    def pair_loss(rollouts: Rollouts, sample_logps: torch.Tensor):
        demo_rewards, sample_rewards = with_samples(demos, rollouts, sample_logps)
        if objective == "bt":  # a sequence's score: its token scores summed
            demo_rewards, sample_rewards = demo_rewards.sum(1), sample_rewards.sum(1)
        return reward_objective.loss(demo_rewards, sample_rewards, pair_batch), {}

    policy.separation = []
    for _ in range(s.iterations):
        rollouts = policy.sample(env, s.batch, horizon, generator)
        logps = policy.logps(rollouts.starts, rollouts.actions)  # the policy step's too: the reward steps don't move it
        sample_logps = logps.detach()
        for _ in range(s.reward_steps if learn_reward else 0):
            reward_step(
                reward,
                params,
                reward_optimizer,
                s.max_grad_norm,
                functools.partial(pair_loss, rollouts, sample_logps),
                hint="Lower compounding.rl.reward_learning_rate",
            )
        with torch.no_grad():
            held_rewards, r = with_samples(heldout, rollouts, sample_logps)
            separation = (held_rewards.sum(1)[:, None] > r.sum(1)[None, :]).float().mean().item()
        policy.separation.append(separation)
        r = r.clamp(-s.reward_clip, s.reward_clip) if separation >= s.reward_gate else torch.zeros_like(r)
        policy_gradient_step(
            policy, optimizer, bc, rollouts, r, ones, s, demos=draw(demos, s.batch, generator), logps=logps
        )
    return policy


def draw(data: Rollouts, n: int, generator: torch.Generator) -> Rollouts:
    """``n`` sequences of ``data``, drawn with replacement."""
    return data[torch.randint(len(data.starts), (n,), generator=generator)]


def _reward_free_loop(
    bc: GRUPolicy, env: Automaton, demos: Rollouts, horizon: int, s: RLSettings, generator: torch.Generator
) -> GRUPolicy:
    """online_irl's policy loop with zero reward: what its BC loss and KL to BC do on their own."""
    policy = clone(bc)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate)
    for _ in range(s.iterations):
        rollouts = policy.sample(env, s.batch, horizon, generator)
        policy_gradient_step(
            policy,
            optimizer,
            bc,
            rollouts,
            torch.zeros(s.batch, horizon),
            torch.ones(s.batch, horizon),
            s,
            demos=draw(demos, s.batch, generator),
        )
    return policy


def dagger(
    bc: GRUPolicy,
    env: Automaton,
    demos: Rollouts,
    heldout: Rollouts,
    horizon: int,
    s: RLSettings,
    generator: torch.Generator,
) -> GRUPolicy:
    """Each round: roll the policy out, let the expert label the states it reached (a sampled expert action where
    the sequence is still alive), and refit on the demonstrations plus every label so far."""
    policy = clone(bc)
    starts, actions, labels, masks = [demos.starts], [demos.actions], [demos.actions], [demos.alive]
    for _ in range(s.dagger_rounds):
        r = policy.sample(env, s.dagger_rollouts, horizon, generator)
        expert = torch.multinomial(
            env.expert_probs(r.states).reshape(-1, env.n_actions), 1, generator=generator
        ).reshape(r.actions.shape)
        starts.append(r.starts)
        actions.append(r.actions)
        labels.append(expert)
        masks.append(r.alive)  # after a non-recoverable error there is no state to label
        data = Rollouts(torch.cat(actions), torch.cat(starts), *(None,) * 4)
        policy = behaviour_cloning(policy, data, heldout, generator, labels=torch.cat(labels), mask=torch.cat(masks))
    return policy
