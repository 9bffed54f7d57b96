"""A random stochastic automaton: a known expert whose exact log-probabilities we can compute.

Text format (one character is one token, so text and token ids round-trip exactly):
    prompt      one upper-case letter, the start state ("C" is state 2)
    completion  lower-case letters, one per step ("fab..." are tokens 5, 0, 1, ...)

The expert in state ``s`` emits token ``a`` with probability ``p(a|s)`` (Dirichlet over ``n_allowed`` tokens,
zero elsewhere) and moves to ``next_state[s, a]``. By default errors are non-recoverable: after the first invalid
token nothing is valid, so a completion succeeds only if all ``horizon`` tokens are valid. With ``recoverable=True``
an invalid token is one error and leaves the state as it was.

A plain random automaton only leaks a constant probability per token (success ~ (1-h)^T). ``rare_states`` adds real
compounding: a sub-automaton of that many states, with valid tokens of its own, that the expert enters through one
"door" token of probability ``rare_prob`` per main state. Demonstrations rarely show it, so a policy that
over-weights a door (a small deviation) lands where its behaviour is least trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .base import Task, TaskData

STATE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class AutomatonTask(Task):
    """A random automaton expert over a small vocabulary; as a pipeline ``Task`` its demonstrations are expert
    rollouts, its verifier the success check and its extra metrics the expert's exact log-probabilities.

    Args:
        n_states: hidden states; the prompt shows the start state.
        n_tokens: vocabulary of actions.
        n_allowed: valid tokens per state (the rest fail the sequence).
        horizon: completion length T of demonstrations and of a successful sample.
        dirichlet_alpha: concentration of each state's distribution over its valid tokens.
        seed: seeds the automaton itself (not the demonstrations).
        transitions: "random": next_state[s, a] is any state (the state is a function of the whole prefix);
            "token": the token sets the next state, next_state[s, a] = a mod n_states (the state is readable from
            the last token, as in a first-order Markov chain with sparse support).
        separator: written before every completion token (" " gives " f a b"): with a subword tokenizer (SmolLM2,
            Llama, Qwen) each " x" is one token, while "fab" would merge. Empty for the character tokenizer.
        rare_states: size of the rarely entered sub-automaton (0: none). Its states are the last ``rare_states``;
            prompts start in the others (the main states). Needs ``transitions="random"``.
        rare_prob: the expert's probability, in each main state, of the door token into the sub-automaton.
        rare_exit_prob: the expert's probability, in each sub-automaton state, of its one token back to the main
            states (None: that token's Dirichlet weight). Small values make the sub-automaton sticky: a policy that
            entered stays where it is least trained, so its error rate grows with time (the T^2 of compounding).
        recoverable: an invalid token is one error and the sequence goes on from the same state (False: it fails
            the rest of the sequence).
        num_demonstrations / num_validation / num_heldout: expert rollouts for training (BC, reward learning, RL
            prompts), for BC early stopping and reward pretraining's accuracy, and for the evaluation alone.
    """

    name = "automaton"

    n_states: int = 16
    n_tokens: int = 16
    n_allowed: int = 4
    horizon: int = 24
    dirichlet_alpha: float = 1.0
    seed: int = 0
    transitions: str = "random"
    separator: str = ""
    rare_states: int = 0
    rare_prob: float = 0.02
    rare_exit_prob: float | None = None
    recoverable: bool = False
    num_demonstrations: int = 200
    num_validation: int = 256
    num_heldout: int = 256
    next_state: np.ndarray = field(init=False, repr=False)
    log_probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        checks = [
            (1 <= self.n_states <= len(STATE_CHARS), f"task.n_states must be in 1..{len(STATE_CHARS)}"),
            (1 <= self.n_tokens <= len(TOKEN_CHARS), f"task.n_tokens must be in 1..{len(TOKEN_CHARS)}"),
            (1 <= self.n_allowed <= self.n_tokens, "task.n_allowed must be in 1..task.n_tokens"),
            (self.horizon >= 1, "task.horizon must be >= 1"),
            (self.dirichlet_alpha > 0, "task.dirichlet_alpha must be > 0"),
            (self.transitions in ("random", "token"), "task.transitions must be 'random' or 'token'"),
            (self.separator in ("", " "), "task.separator must be '' or ' '"),
            (0 <= self.rare_states < self.n_states, "task.rare_states must be in 0..task.n_states-1"),
            (not self.rare_states or 0 < self.rare_prob < 1, "task.rare_prob must be in (0, 1)"),
            (self.rare_exit_prob is None or 0 < self.rare_exit_prob < 1, "task.rare_exit_prob must be in (0, 1)"),
            (
                self.rare_exit_prob is None or self.n_allowed >= 2,
                "task.rare_exit_prob needs task.n_allowed >= 2 (the exit and at least one token that stays)",
            ),
            (
                not self.rare_states or self.n_allowed < self.n_tokens,
                "task.n_allowed must be < task.n_tokens with rare_states (the door is a token outside the allowed "
                "ones)",
            ),
            (
                not self.rare_states or self.transitions == "random",
                "task.rare_states needs task.transitions='random' (with 'token' the last token alone sets the state)",
            ),
            *[
                (getattr(self, k) >= 1, f"task.{k} must be >= 1")
                for k in ("num_demonstrations", "num_validation", "num_heldout")
            ],
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {self})")
        rng = np.random.default_rng(self.seed)
        self.next_state = rng.integers(0, self.n_states, size=(self.n_states, self.n_tokens))
        if self.transitions == "token":
            self.next_state = np.tile(np.arange(self.n_tokens) % self.n_states, (self.n_states, 1))
        probs = np.zeros((self.n_states, self.n_tokens))
        for s in range(self.n_states):
            allowed = rng.choice(self.n_tokens, size=self.n_allowed, replace=False)
            probs[s, allowed] = rng.dirichlet(np.full(self.n_allowed, self.dirichlet_alpha))
        if self.rare_states:
            self._add_sub_automaton(rng, probs)
        with np.errstate(divide="ignore"):
            self.log_probs = np.log(probs)

    def _add_sub_automaton(self, rng, probs):
        """Main states keep to main states, plus one door token (probability ``rare_prob``) into the sub-automaton;
        sub-automaton states keep to it, except one valid token each that leads back to a main state."""
        n_main = self.n_states - self.rare_states
        for s in range(self.n_states):
            allowed = np.flatnonzero(probs[s])
            if s < n_main:
                self.next_state[s, allowed] = rng.integers(0, n_main, size=allowed.size)
                door = rng.choice(np.setdiff1d(np.arange(self.n_tokens), allowed))
                probs[s] *= 1 - self.rare_prob
                probs[s, door] = self.rare_prob
                self.next_state[s, door] = rng.integers(n_main, self.n_states)
            else:
                self.next_state[s, allowed] = rng.integers(n_main, self.n_states, size=allowed.size)
                exit_token = rng.choice(allowed)
                self.next_state[s, exit_token] = rng.integers(0, n_main)
                if self.rare_exit_prob is not None:
                    probs[s, exit_token] = 0.0
                    probs[s] *= (1 - self.rare_exit_prob) / probs[s].sum()
                    probs[s, exit_token] = self.rare_exit_prob

    @property
    def n_start_states(self) -> int:
        """Prompts start in the main states (all states when there is no sub-automaton)."""
        return self.n_states - self.rare_states

    # --- vocabulary -------------------------------------------------------------------------------------------
    @property
    def alphabet(self) -> list[str]:
        """Every character the task writes: start states, then tokens."""
        return list(STATE_CHARS[: self.n_states]) + list(TOKEN_CHARS[: self.n_tokens]) + list(self.separator)

    @property
    def step_texts(self) -> list[str]:
        """The text of each possible completion step (a tokenizer must keep each one a single token)."""
        return [self.render([c]) for c in TOKEN_CHARS[: self.n_tokens]]

    def render(self, tokens: list[str]) -> str:
        """Completion text of token characters: the separator before each."""
        return "".join(self.separator + t for t in tokens)

    def split(self, completion: str) -> list[str]:
        """The completion's steps: its characters, or with a separator the pieces between separators (a piece that
        is not one token character is an invalid step)."""
        return list(completion) if not self.separator else [t for t in completion.split(self.separator) if t]

    def check_tokenizer(self, tokenizer, model_path: str):
        """One tokenizer token per step, or the horizon in tokens and in steps disagree."""
        merged = [
            s for s in self.prompts + self.step_texts if len(tokenizer(s, add_special_tokens=False)["input_ids"]) != 1
        ]
        if merged:
            raise ValueError(
                f"with model.path={model_path} the task's steps {merged[:4]} are not single tokens: set "
                "task.separator=' ' (subword tokenizers write ' a' as one token)"
            )

    # --- the Task interface -----------------------------------------------------------------------------------
    def data(self, tokenizer, seed: int) -> TaskData:
        """Expert rollouts; each split has its own seed, so the evaluation's rows are never trained on. The report
        says what the rows are: counts, the automaton's shape, and the expert's entropy per step."""
        report = {
            "train": self.num_demonstrations,
            "validation": self.num_validation,
            "heldout": self.num_heldout,
            "max_completion_length": self.horizon,
            "n_states": self.n_states,
            "n_tokens": self.n_tokens,
            "n_allowed": self.n_allowed,
            "transitions": self.transitions,
            "rare_states": self.rare_states,
            "recoverable": self.recoverable,
            "automaton_seed": self.seed,
            "expert_entropy_per_token": -self.expert_logprob_per_token(),
        }
        return TaskData(
            train=self.sample_demonstrations(self.num_demonstrations, seed=1000 + seed),
            validation=self.sample_demonstrations(self.num_validation, seed=1500 + seed),
            heldout=self.sample_demonstrations(self.num_heldout, seed=2000 + seed),
            max_completion_length=self.horizon,
            max_prompt_length=1,
            report=report,
        )

    @property
    def verifier(self):
        return lambda prompt, completion, row: float(self.is_success(prompt, completion))

    def metrics(self, prompts: list[str], samples: list[str]) -> dict[str, float]:
        """expert_logprob_per_token: mean expert log p(x_t | prefix) over the samples' valid tokens (fidelity);
        valid_token_rate: the fraction of sampled steps that are valid (the rest follow a first error)."""
        token_lp = [self.token_logprobs(p, c) for p, c in zip(prompts, samples)]
        valid = np.concatenate([lp[np.isfinite(lp)] for lp in token_lp] or [np.zeros(0)])
        n_steps = sum(len(lp) for lp in token_lp)
        return {
            "expert_logprob_per_token": float(valid.mean()) if valid.size else -math.inf,
            "valid_token_rate": float(valid.size / max(n_steps, 1)),
        }

    def reference(self) -> dict[str, float]:
        return {"expert_logprob_per_token": self.expert_logprob_per_token(), "success_rate": 1.0}

    def prompt(self, state: int) -> str:
        return STATE_CHARS[state]

    def start_state(self, prompt: str) -> int:
        if len(prompt) != 1 or prompt not in STATE_CHARS[: self.n_states]:
            raise ValueError(
                f"prompt {prompt!r} is not a start state of this task (one of {STATE_CHARS[: self.n_states]})"
            )
        return STATE_CHARS.index(prompt)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt(s) for s in range(self.n_start_states)]

    # --- the expert -------------------------------------------------------------------------------------------
    def sample_demonstrations(self, n: int, seed: int) -> list[dict[str, str]]:
        """``n`` expert rollouts of length ``horizon``, start states uniform: ``[{"prompt", "completion"}]``."""
        rng = np.random.default_rng(seed)
        probs = np.exp(self.log_probs)
        demos = []
        for _ in range(n):
            s = int(rng.integers(self.n_start_states))
            prompt, tokens = self.prompt(s), []
            for _ in range(self.horizon):
                a = int(rng.choice(self.n_tokens, p=probs[s]))
                tokens.append(TOKEN_CHARS[a])
                s = int(self.next_state[s, a])
            demos.append({"prompt": prompt, "completion": self.render(tokens)})
        return demos

    def token_logprobs(self, prompt: str, completion: str) -> np.ndarray:
        """Expert log p(x_t | prefix) for each step of ``completion``; -inf for an invalid step and (non-recoverable)
        every step after the first invalid one."""
        s = self.start_state(prompt)
        steps = self.split(completion)
        out = np.full(len(steps), -np.inf)
        for t, ch in enumerate(steps):
            a = TOKEN_CHARS.find(ch) if len(ch) == 1 else -1
            if not 0 <= a < self.n_tokens or not np.isfinite(self.log_probs[s, a]):
                if self.recoverable:
                    continue  # one error; the state stays
                break  # non-recoverable: this token and every later one are invalid
            out[t] = self.log_probs[s, a]
            s = int(self.next_state[s, a])
        return out

    def invalid_count(self, prompt: str, completion: str) -> int:
        """Invalid steps of ``completion`` plus missing steps up to ``horizon`` (non-recoverable: every step from the
        first error on)."""
        lp = self.token_logprobs(prompt, completion)
        return int((~np.isfinite(lp)).sum()) + max(self.horizon - len(lp), 0)

    def state_path(self, prompt: str, completion: str) -> list[int]:
        """The state before each step (invalid steps leave it unchanged; non-recoverable: up to the first error)."""
        s, path = self.start_state(prompt), []
        for ch, lp in zip(self.split(completion), self.token_logprobs(prompt, completion)):
            path.append(s)
            if np.isfinite(lp):
                s = int(self.next_state[s, TOKEN_CHARS.index(ch)])
            elif not self.recoverable:
                break
        return path

    def sequence_logprob(self, prompt: str, completion: str) -> float:
        return float(self.token_logprobs(prompt, completion).sum())

    def valid_prefix_length(self, prompt: str, completion: str) -> int:
        return int(np.isfinite(self.token_logprobs(prompt, completion)).sum())

    def is_success(self, prompt: str, completion: str) -> bool:
        return (
            len(self.split(completion)) == self.horizon and self.valid_prefix_length(prompt, completion) == self.horizon
        )

    def expert_logprob_per_token(self) -> float:
        """Exact E[log p(x_t|prefix)] over the expert's own rollouts of length ``horizon`` (minus its entropy rate)."""
        probs = np.exp(self.log_probs)
        plogp = np.where(probs > 0, probs * np.where(probs > 0, self.log_probs, 0.0), 0.0).sum(axis=1)
        total = 0.0
        for state_dist in self.expert_state_distributions():
            total += state_dist @ plogp
        return float(total / self.horizon)

    def expert_state_distributions(self) -> np.ndarray:
        """(horizon, n_states): the exact distribution of the expert's state before each step t."""
        probs = np.exp(self.log_probs)
        state_dist = np.zeros(self.n_states)
        state_dist[: self.n_start_states] = 1.0 / self.n_start_states
        out = []
        for _ in range(self.horizon):
            out.append(state_dist)
            nxt = np.zeros(self.n_states)
            np.add.at(nxt, self.next_state.ravel(), (state_dist[:, None] * probs).ravel())
            state_dist = nxt
        return np.array(out)
