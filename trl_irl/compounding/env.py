"""The known-expert automaton as batched tensors, and a small recurrent policy that acts in it.

TRL runs of a transformer cost minutes each; the compounding-error study needs hundreds of (arm, horizon, setting,
seed) runs on 2 cores, so it rolls a GRU out in a vectorised loop instead. The dynamics are the task's own
``next_state`` and ``log_probs`` (``trl_irl.tasks.AutomatonTask``), so every metric is exact to the task.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch

from ..tasks import AutomatonTask


@dataclass
class Rollouts:
    """A batch of sequences of length T: actions, the state before each action, and what the task says of them."""

    actions: torch.Tensor  # (N, T) long
    starts: torch.Tensor  # (N,) long, the start state (shown by the prompt token)
    states: torch.Tensor  # (N, T) long, the state before each action
    valid: torch.Tensor  # (N, T) bool, the action is valid where it is taken
    alive: torch.Tensor  # (N, T) bool, no earlier non-recoverable error (recoverable: all True)
    expert_logps: torch.Tensor  # (N, T) expert log p(action | state), -inf where invalid

    def __getitem__(self, idx) -> Rollouts:
        """The sequences ``idx`` of the batch."""
        return Rollouts(*(getattr(self, f.name)[idx] for f in fields(self)))

    def prefix(self, horizon: int) -> Rollouts:
        """The first ``horizon`` steps of every sequence."""
        return Rollouts(
            *(v if f.name == "starts" else v[:, :horizon] for f in fields(self) for v in [getattr(self, f.name)])
        )


class Automaton:
    """``AutomatonTask``'s dynamics as tensors: step every sequence of a batch at once."""

    def __init__(self, task: AutomatonTask, n_starts: int | None = None):
        """``n_starts``: sequences start in states 0..n_starts-1 (default: every start state of the task)."""
        if n_starts is not None and not 1 <= n_starts <= task.n_start_states:
            raise ValueError(f"n_starts must be in 1..{task.n_start_states} (the task's start states), got {n_starts}")
        self.task = task
        self.next_state = torch.as_tensor(task.next_state, dtype=torch.long)
        self.log_probs = torch.as_tensor(task.log_probs, dtype=torch.float32)
        self.n_actions, self.n_starts = task.n_tokens, n_starts or task.n_start_states

    def expert_probs(self, states: torch.Tensor) -> torch.Tensor:
        return self.log_probs[states].exp()

    def run(self, starts: torch.Tensor, actions: torch.Tensor) -> Rollouts:
        """States, validity and expert log-probs of ``actions`` (N, T) from ``starts``: an invalid action leaves the
        state as it was; without ``task.recoverable`` every later step is dead."""
        N, T = actions.shape
        states, valid, alive = (
            torch.empty(N, T, dtype=torch.long),
            torch.empty(N, T, dtype=torch.bool),
            torch.empty(N, T, dtype=torch.bool),
        )
        s, ok = starts.clone(), torch.ones(N, dtype=torch.bool)
        for t in range(T):
            a = actions[:, t]
            states[:, t], alive[:, t] = s, ok
            v = torch.isfinite(self.log_probs[s, a])
            valid[:, t] = v & ok
            s = torch.where(v, self.next_state[s, a], s)
            if not self.task.recoverable:
                ok = ok & v
        lp = self.log_probs[states, actions].masked_fill(~valid, float("-inf"))
        return Rollouts(actions, starts, states, valid, alive, lp)

    def demonstrations(self, n: int, horizon: int, generator: torch.Generator) -> Rollouts:
        starts = torch.randint(self.n_starts, (n,), generator=generator)
        actions, s = torch.empty(n, horizon, dtype=torch.long), starts.clone()
        for t in range(horizon):
            a = torch.multinomial(self.expert_probs(s), 1, generator=generator).squeeze(1)
            actions[:, t], s = a, self.next_state[s, a]
        return self.run(starts, actions)


class GRUPolicy(torch.nn.Module):
    """pi(a_t | start, a_<t): the start state and the actions so far through a GRU; ``hidden`` sets the capacity
    (too small a GRU cannot track the automaton's state: the misspecified setting)."""

    def __init__(self, n_starts: int, n_actions: int, hidden: int, embed: int = 32):
        super().__init__()
        self.n_actions = n_actions
        self.embed = torch.nn.Embedding(n_starts + n_actions, embed)
        self.gru = torch.nn.GRU(embed, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, n_actions)

    def inputs(self, starts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Token ids: the start token, then every action but the last (position t predicts a_t)."""
        return torch.cat([(starts + self.n_actions)[:, None], actions[:, :-1]], dim=1)

    def forward(self, starts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over actions at each position (N, T, A)."""
        out, _ = self.gru(self.embed(self.inputs(starts, actions)))
        return torch.log_softmax(self.head(out), dim=-1)

    def logps(self, starts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a_t | a_<t) of the taken actions (N, T)."""
        return self(starts, actions).gather(-1, actions[..., None]).squeeze(-1)

    @torch.no_grad()
    def sample(
        self, env: Automaton, n: int, horizon: int, generator: torch.Generator, starts: torch.Tensor | None = None
    ) -> Rollouts:
        starts = torch.randint(env.n_starts, (n,), generator=generator) if starts is None else starts
        x, h = (starts + self.n_actions)[:, None], None
        actions = torch.empty(n, horizon, dtype=torch.long)
        for t in range(horizon):
            out, h = self.gru(self.embed(x), h)
            probs = torch.softmax(self.head(out[:, -1]), dim=-1)
            actions[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            x = actions[:, t : t + 1]
        return env.run(starts, actions)


def clone(policy: GRUPolicy) -> GRUPolicy:
    return copy.deepcopy(policy)


def metrics(rollouts: Rollouts, horizon: int) -> dict[str, float]:
    """success_rate: every action valid; invalid_per_rollout: invalid steps (non-recoverable: every step from the
    first error on); expert_logprob_per_token: the expert's mean log-prob of the valid actions;
    errors_per_rollout: the errors that count (each invalid action when recoverable, else the first one);
    errors_after_first / steps_after_first (per rollout): the errors that count after a rollout's first error, and the
    steps left after it; their ratio is the error rate once off the demonstrations (0 when non-recoverable)."""
    valid = rollouts.valid
    lp = rollouts.expert_logps[valid]
    counted = (~valid) & rollouts.alive
    erred = counted.any(dim=1)
    first = counted.float().argmax(dim=1).float()
    return {
        "success_rate": valid.all(dim=1).float().mean().item(),
        "invalid_per_rollout": (horizon - valid.sum(dim=1)).float().mean().item(),
        "expert_logprob_per_token": lp.mean().item() if lp.numel() else float("-inf"),
        "errors_per_rollout": counted.sum(dim=1).float().mean().item(),
        "errors_after_first": (counted.sum(dim=1) - erred.long()).float().mean().item(),
        "steps_after_first": torch.where(erred, horizon - 1 - first, torch.zeros_like(first)).mean().item(),
    }
