"""The online-IRL reward updater: a reward model that keeps learning during policy training.

It lives outside TRL's optimizer, checkpoints and process sync, so it owns all three: its own AdamW, a bounded
replay buffer of recent (prompt, demonstration, sample, demonstration's prompt) pairs, gradients all-reduced across
processes so every rank holds the same reward model, and an atomic save/load of everything a resume needs.

A sample on a prompt without a demonstration (a rollout prompt, ``task.rollout_path``) is paired, when it enters
the buffer, with a demonstration drawn uniformly from ``demonstrations`` by the updater's seeded generator (so a
resume draws the same). Bradley-Terry then asks that demonstrations score above the policy's samples across
prompts, not only on the same prompt; GAIL's and AIRL's losses score each side alone, so the pairing does not
change what they learn.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import deque
from pathlib import Path

import torch

from ..batching import all_reduce_mean_, check_batch_size
from ..checkpoints import atomic_directory, read_json, read_safetensors
from ..precision import cpu_autocast
from ..shared_base import adapter_scope, trainable_parameters
from ..trainable_layers import limit_trainable_layers
from .objectives import RewardObjective, encode

STATE_DIR = "irl_reward"


class ReplayBuffer:
    """The ``capacity`` most recent (prompt, demonstration, sample, demonstration's prompt) text pairs."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"reward_buffer_size must be >= 1, got {capacity}")
        self.items: deque[tuple[str, str, str, str]] = deque(maxlen=capacity)

    def __len__(self):
        return len(self.items)

    def add(self, prompts, demonstrations, samples, demonstration_prompts=None):
        """``demonstration_prompts``: where a demonstration answers another prompt (None: each row's own)."""
        prompts = list(prompts)
        self.items.extend(zip(prompts, demonstrations, samples, demonstration_prompts or prompts, strict=True))

    def sample(self, n: int, generator: torch.Generator) -> list[tuple[str, str, str, str]]:
        idx = torch.randint(len(self.items), (n,), generator=generator)
        return [self.items[i] for i in idx.tolist()]


class RunningStandardizer:
    """Running mean and variance over every reward seen (Chan et al.'s parallel update); x -> (x - mean) / std."""

    def __init__(self, eps: float = 1e-4):  # as TRL's GRPO: ties stay ties, not amplified noise
        self.count, self.mean, self.m2, self.eps = 0, 0.0, 0.0, eps

    def update(self, x: torch.Tensor):
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / max(self.count - 1, 1)) ** 0.5 if self.count > 1 else 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + self.eps)

    def state_dict(self):
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state):
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


DIVERGING_HINT = (
    "Lower reward_learning_rate or reward_max_grad_norm (reward.online.learning_rate / max_grad_norm "
    "on the CLI), and resume from the last checkpoint (resume=true) or an earlier one "
    "(resume_from=checkpoint-N)"
)


def reward_step(
    model, params, optimizer, max_grad_norm: float, loss_fn, step: int = 0, hint: str = DIVERGING_HINT
) -> dict[str, float]:
    """One optimizer step of a learning reward model, the one every reward learner here takes (the online updates,
    an adapter role's pretraining, the compounding study's).

    Args:
        model: the reward model (an ``AdapterRole`` on a shared base: forward and backward run under its adapter,
            since checkpointing recomputes the forward during backward).
        params: its trainable parameters, the ones ``optimizer`` steps.
        max_grad_norm: gradient clipping.
        loss_fn: () -> (loss, metrics), the objective's loss computed inside the adapter scope.
        step: the count of steps taken so far, for the error message; ``hint``: the fix the message gives.

    Returns:
        ``metrics`` with ``grad_norm``. Gradients are averaged across processes first (every rank keeps the same
        reward model); a non-finite loss or gradient raises before the step, so the model stays finite.
    """
    with adapter_scope(model):
        loss, metrics = loss_fn()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
    all_reduce_mean_([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
    metrics = {**metrics, "grad_norm": torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()}
    if not (math.isfinite(loss.item()) and math.isfinite(metrics["grad_norm"])):
        raise FloatingPointError(
            f"the reward model's loss or gradient is not finite (loss {loss.item()}, grad norm "
            f"{metrics['grad_norm']}) at reward update {step}: it is diverging. {hint}"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no gradients held between updates: one adapter's worth of memory
    return metrics


class OnlineRewardUpdater:
    """Owns a learning reward model: buffer, optimizer, cross-process gradient sync, state for checkpoints."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        objective: RewardObjective,
        *,
        learning_rate: float,
        weight_decay: float,
        batch_size: int,
        steps: int,
        buffer_size: int,
        max_grad_norm: float,
        seed: int,
        scoring_batch_size: int | None = None,
        trainable_layers: int | None = None,
        bf16: bool = False,
        demonstrations: list[tuple[str, str]] | None = None,
    ):
        """``batch_size`` (demonstration, sample) pairs per optimizer step; ``scoring_batch_size`` rows per forward
        pass when ``rewards`` scores (None: all at once); ``trainable_layers``: only the model's top blocks and head
        train (``trainable_layers.limit_trainable_layers``); ``bf16``: scoring and updates under bf16 autocast on CPU;
        ``demonstrations``: (prompt, demonstration) pairs a sample without a demonstration is paired with."""
        check_batch_size(scoring_batch_size)
        limit_trainable_layers(model, trainable_layers)
        self.model, self.tokenizer, self.objective, self.bf16 = model, tokenizer, objective, bf16
        self.scoring_batch_size = scoring_batch_size
        self.batch_size, self.steps, self.max_grad_norm = batch_size, steps, max_grad_norm
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError(
                "the reward model has no trainable parameters: an online reward model must be able to learn"
            )
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=weight_decay)
        self.buffer = ReplayBuffer(buffer_size)
        self.standardizer = RunningStandardizer()
        self.generator = torch.Generator().manual_seed(seed)
        self.num_updates = 0  # reward-model optimizer steps taken
        self.num_batches = 0  # generation batches seen
        self.model.eval()
        self.demonstrations = list(demonstrations or [])

    def add(self, prompts, demonstrations, samples):
        """Buffer one generation batch: each sample with its row's demonstration, or, where the row has none
        (None), with a demonstration drawn from ``self.demonstrations`` (module docstring)."""
        prompts, demonstrations = list(prompts), list(demonstrations)
        demonstration_prompts = list(prompts)
        missing = [i for i, d in enumerate(demonstrations) if d is None]
        if missing:
            if not self.demonstrations:
                raise ValueError(
                    f"{len(missing)} sample(s) have no demonstration (prompts without one) and the updater "
                    "has none to pair them with: pass demonstrations=[(prompt, demonstration), ...]"
                )
            drawn = torch.randint(len(self.demonstrations), (len(missing),), generator=self.generator).tolist()
            for i, j in zip(missing, drawn):
                demonstration_prompts[i], demonstrations[i] = self.demonstrations[j]
        self.buffer.add(prompts, demonstrations, samples, demonstration_prompts)
        self.num_batches += 1

    def update(self, policy=None) -> dict[str, float]:
        """``steps`` optimizer steps on demonstrations vs buffered samples; returns the mean metrics."""
        if len(self.buffer) == 0:
            raise RuntimeError("the replay buffer is empty: add policy samples before updating the reward model")
        device = self.device
        self.model.train()
        totals: dict[str, float] = {}
        for _ in range(self.steps):
            prompts, demos, samples, demo_prompts = zip(*self.buffer.sample(self.batch_size, self.generator))
            batch = encode(self.tokenizer, list(demo_prompts) + list(prompts), list(demos) + list(samples))
            batch = {k: v.to(device) for k, v in batch.items()}
            metrics = reward_step(
                self.model,
                self.params,
                self.optimizer,
                self.max_grad_norm,
                functools.partial(self.pair_loss, batch, policy),
                self.num_updates,
            )
            self.num_updates += 1
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / self.steps
        self.model.eval()
        return totals

    def pair_loss(self, batch, policy=None):
        with cpu_autocast(self.bf16, self.device):
            return self.objective.pair_loss(self.model, batch, policy)

    def rewards(self, prompts, completions, policy=None) -> torch.Tensor:
        with cpu_autocast(self.bf16, self.device):
            return self.objective.rewards(
                self.model, self.tokenizer, prompts, completions, policy, batch_size=self.scoring_batch_size
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- checkpointing ----------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike):
        """Write model (safetensors), optimizer, buffer and counters into ``directory``, atomically: a crash
        mid-write leaves the previous state in place."""
        state = {
            "num_updates": self.num_updates,
            "num_batches": self.num_batches,
            "standardizer": self.standardizer.state_dict(),
            "generator": self.generator.get_state().tolist(),
            "buffer_capacity": self.buffer.items.maxlen,
            "buffer": list(self.buffer.items),
        }
        with atomic_directory(directory) as tmp:
            self.model.save_pretrained(tmp / "model", safe_serialization=True)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state))

    def load(self, directory: str | os.PathLike):
        directory = Path(directory)
        if not (directory / "state.json").exists():
            raise FileNotFoundError(
                f"no online reward state in {directory} (expected {STATE_DIR}/state.json in the "
                "checkpoint): was it written by OnlineRewardGRPOTrainer?"
            )
        missing, unexpected = self.model.load_state_dict(read_safetensors(directory / "model"), strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:  # tied heads are not saved
            raise ValueError(
                f"reward checkpoint does not match the reward model: missing={missing} unexpected={unexpected}"
            )
        device = next(self.model.parameters()).device
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=device, weights_only=True))
        state = read_json(directory / "state.json")
        self.num_updates, self.num_batches = state["num_updates"], state["num_batches"]
        self.standardizer.load_state_dict(state["standardizer"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.buffer = ReplayBuffer(state["buffer_capacity"])
        self.buffer.items.extend(
            (*item, item[0]) if len(item) == 3 else tuple(item)  # 3: written before pairing
            for item in state["buffer"]
        )
