"""PPO (Schulman et al. 2017) as a thin ``GRPOTrainer`` subclass: a critic, GAE advantages of shape (B, T), a
clipped value loss (TRL 1.16 has no PPOTrainer). It rides on GRPO's generation and clipped policy loss and adds
only what PPO has beyond it.

PPO epochs and minibatches are TRL's ``num_iterations`` and ``steps_per_generation``. Hooks, each calling ``super()``:
    compute_advantages     token rewards -> critic values -> GAE (credit/advantages.py) -> advantages, returns
    _compute_loss          + vf_coef * clipped value loss, backpropagated before the policy's forward (the two graphs
                           never coexist) and under the critic's adapter scope: a critic that is an adapter on the
                           policy's shared base takes gradients only there, and checkpointing recomputes its forward
                           with its own adapter. One backward of both losses gave that critic no gradient
                           (tests/test_shared_base.py measures it), so the value loss keeps its own backward
    create_optimizer       the critic's parameters as an extra group (own learning rate; clipped and, under several
                           processes, all-reduced by a step pre-hook, since Trainer clips only the policy; cleared
                           by a post-hook, since Trainer zeroes only the model's gradients). Under DeepSpeed ZeRO-1/2
                           the engine reduces, clips (at max_grad_norm, with the policy) and clears the group itself,
                           which needs the critic on the shared base with its value head registered in the model
    _save_own_state / _load_optimizer_and_scheduler    the critic's weights (its Adam state rides in the optimizer)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification

from .. import credit as C
from ..batching import all_reduce_mean_, by_rows, model_inputs, prompt_completion_batch
from ..checkpoints import atomic_directory, load_weights
from ..rewards.losses import masked_mean
from ..shared_base import AdapterRole, adapter_scope, trainable_parameters
from .online_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer, deepspeed_stage

CRITIC_DIR = "critic"


@dataclass
class PPOConfig(OnlineRewardGRPOConfig):
    """OnlineRewardGRPOConfig plus the critic's settings. GAE's gamma is ``credit_gamma``."""

    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD."})
    vf_coef: float = field(default=0.5, metadata={"help": "Weight of the value loss in the total loss."})
    cliprange_value: float = field(
        default=0.2,
        metadata={
            "help": "Clip of the value prediction around its value at generation time (PPO's clipped value loss)."
        },
    )
    critic_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the critic."})
    critic_max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": "Gradient clipping of the critic (under DeepSpeed the engine clips it with the policy at "
            "max_grad_norm)."
        },
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Normalise advantages over the batch's valid tokens (mean 0, std 1)."}
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "GRPO's reward scaling does not apply to GAE: 'none' only (whiten_advantages normalises PPO's)."
        },
    )
    critic_model: str | None = field(
        default=None,
        metadata={
            "help": "Path of the critic's initial weights (a causal LM or token classifier). Default: the policy's own "
            "weights, with a zero value head, so the critic starts from the policy's features."
        },
    )

    @property
    def token_level(self) -> bool:
        return True  # GAE runs over tokens whatever the credit (credit=sequence: the reward on the last token)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.cliprange_value <= 0:
            raise ValueError(f"cliprange_value must be > 0, got {self.cliprange_value}")
        if not self.critic_learning_rate > 0:
            raise ValueError(f"critic_learning_rate must be > 0, got {self.critic_learning_rate}")


def build_critic(policy: torch.nn.Module, path: str | None = None) -> torch.nn.Module:
    """A value model V(s_t) on the policy's config: a token classifier with one output, its trunk initialised from
    ``path`` or from the policy's trunk, its head at zero (V = 0 at the start)."""
    if path is not None:
        critic = AutoModelForTokenClassification.from_pretrained(path, num_labels=1)
    else:
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        critic = AutoModelForTokenClassification.from_config(config)
        critic.base_model.load_state_dict(policy.base_model.state_dict())
    head = critic.score if hasattr(critic, "score") else critic.classifier
    torch.nn.init.zeros_(head.weight)
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)
    return critic.to(next(policy.parameters()).device)


class PPOTrainer(OnlineRewardGRPOTrainer):
    """PPO with a separate critic and GAE over token rewards from any credit source (``credit=sequence``: the
    reward on the last token). Takes the same reward sources as every trainer here."""

    SCALE_REWARDS = ("none",)  # GAE's advantages are normalised by whiten_advantages

    def __init__(self, model, reward_model=None, args=None, *, critic=None, **kwargs):
        """As ``OnlineRewardGRPOTrainer``; ``critic``: the value model (None: one built from the policy,
        ``build_critic``), an ``AdapterRole`` on a shared base under DeepSpeed."""
        deepspeed = deepspeed_stage(args) is not None
        if deepspeed and not isinstance(critic, AdapterRole):
            raise ValueError(
                "PPOTrainer under DeepSpeed needs the critic as an adapter on the policy's shared base "
                "(shared_base=true): ZeRO optimises only parameters of the model it wraps, and a separate "
                "critic model is not one. Set shared_base=true, or launch without DeepSpeed (DDP)"
            )
        super().__init__(model, reward_model, args, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        self.critic = critic if critic is not None else build_critic(policy, self.args.critic_model)
        self.critic.to(self.accelerator.device).train()
        if deepspeed:  # the adapter is in the wrapped model already; its value head must be too
            policy.add_module("critic_value_head", self.critic.score)

    def values(self, critic, output: dict, batch_size: int | None = None) -> torch.Tensor:
        """V(s_t) for every completion token t (B, T): the critic's output at the position before token t, from
        ``batch_size`` rows at a time (None: all)."""
        logits = by_rows(
            lambda b: critic(**model_inputs(b)).logits[..., 0], prompt_completion_batch(output), batch_size
        )
        P, T = output["prompt_ids"].size(1), output["completion_ids"].size(1)
        return logits[:, P - 1 : P - 1 + T].float() * output["completion_mask"]

    def compute_advantages(self, rewards, mask, output, inputs):
        """GAE on the critic's values V(s_t), whitened over the batch; also leaves in ``output`` what the value loss
        needs: the critic's targets (returns; V itself on masked rows, so they add no loss) and V at sampling time.

        Args / Returns: as ``OnlineRewardGRPOTrainer.compute_advantages``, rewards always (B, T)
        (``PPOConfig.token_level``).
        """
        with torch.no_grad():  # per micro-batch, as TRL's log-probs
            values = self.values(self.critic, output, self.args.per_device_train_batch_size)
        advantages, returns = C.gae(rewards, values, mask, self.args.credit_gamma, self.args.gae_lambda)
        if self.args.whiten_advantages:
            advantages = self.across_processes(C.whiten, advantages, mask)
        output.update(returns=torch.where(mask.bool(), returns, values), old_values=values)
        self.policy_logps(output)  # PPO's ratio needs the sampling policy's log-probs even when TRL skips them
        return advantages

    def _compute_loss(self, model, inputs):
        if "returns" in inputs:  # evaluation batches carry no returns
            self._value_loss_backward(inputs)  # first: its graph is freed before the policy's forward builds its own
        return super()._compute_loss(model, inputs)

    def _value_loss_backward(self, inputs):
        """PPO's clipped value loss, logged, and backpropagated (times ``vf_coef``) right away, under the critic's
        adapter scope: on a shared base gradient checkpointing recomputes the critic's forward with its adapter."""
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"].float()
        with adapter_scope(self.critic):
            values, old, returns = self.values(self.critic, inputs), inputs["old_values"], inputs["returns"]
            clipped = old + (values - old).clamp(-self.args.cliprange_value, self.args.cliprange_value)
            value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
            if mode == "train" and torch.is_grad_enabled():
                loss = self.args.vf_coef * value_loss / self.current_gradient_accumulation_steps
                if self.is_deepspeed_enabled:  # the engine's backward (ZeRO's buckets), not accelerate's: it steps too
                    self.model_wrapped.backward(loss, scale_wrt_gas=False)
                else:
                    self.accelerator.backward(loss)
        self._metrics[mode]["value_loss"].append(value_loss.item())
        self._metrics[mode]["value_clipfrac"].append(
            masked_mean(((values - clipped).abs() > 1e-8).float(), mask).item()
        )

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is not None:  # built already (DeepSpeed's init builds it before Trainer asks)
            return super().create_optimizer(*args, **kwargs)
        optimizer = super().create_optimizer(*args, **kwargs)
        params = trainable_parameters(self.critic)
        optimizer.add_param_group({"params": params, "lr": self.args.critic_learning_rate, "weight_decay": 0.0})
        if self.is_deepspeed_enabled:
            # ZeRO keeps the parameters that require grad when it wraps this optimizer, then reduces and clips
            # (at max_grad_norm) every group itself. An inactive adapter gets no gradient, so the flag is harmless.
            for p in params:
                p.requires_grad_(True)
            return optimizer

        def clip_critic(opt, args, kwargs):
            all_reduce_mean_([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
            norm = torch.nn.utils.clip_grad_norm_(params, self.args.critic_max_grad_norm)
            self._metrics["train"]["critic_grad_norm"].append(norm.item())

        def zero_critic(
            opt, args, kwargs
        ):  # Trainer zeroes only the model's gradients; a critic outside it keeps its own
            for p in params:
                p.grad = None

        optimizer.register_step_pre_hook(clip_critic)
        optimizer.register_step_post_hook(zero_critic)
        return optimizer

    def _save_own_state(self, directory: Path):
        super()._save_own_state(directory)
        save_critic(self.critic, directory / CRITIC_DIR)

    def trained_modules(self) -> dict:
        return {**super().trained_modules(), "critic": self.critic}

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None:  # weights first: the optimizer state refers to these parameters
            load_critic(self.critic, Path(checkpoint) / CRITIC_DIR)
        super()._load_optimizer_and_scheduler(checkpoint)


def save_critic(critic: torch.nn.Module, directory: Path):
    """safetensors into ``directory``, atomically."""
    with atomic_directory(directory) as tmp:
        critic.save_pretrained(tmp, safe_serialization=True)


def load_critic(critic: torch.nn.Module, directory: Path):
    load_weights(critic, directory, "PPOTrainer's checkpoint")
