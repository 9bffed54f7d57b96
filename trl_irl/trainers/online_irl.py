"""Online IRL on top of TRL's GRPOTrainer, with token-level credit.

Three questions, three places: the reward comes from ``OnlineRewardMixin`` (a reward model that keeps learning from
demonstrations vs the policy's own samples, plus any reward functions), credit is spread over tokens by
``trainers/token_rewards.py`` (pure maths in ``credit/``), and each algorithm says how returns become advantages in one
method, ``compute_advantages``: GRPO here, RLOO / ReMax / REINFORCE++ in ``algorithms.py``, PPO in ``ppo.py``.

Hooks (each calls ``super()`` and transforms its result; no TRL method body is copied):
    _generate                        bf16 autocast of the policy's sampling on CPU
    _generate_and_score_completions  token credit -> advantages (B, T); buffer the samples; update the reward model
    _calculate_rewards               ``score_rewards`` on the sampled batch: stop on NaN rewards, standardise the IRL
                                     reward with running statistics; each row's rewards are carried in its batch row
                                     (``ROW_REWARDS``) to the advantages
    _save_checkpoint / _load_optimizer_and_scheduler   the reward model, its optimizer, buffer and statistics; a
                                                       NaN check first, the COMPLETE marker last
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOConfig, GRPOTrainer

from .. import credit as C
from ..batching import prompt_completion_batch
from ..checkpoints import mark_complete, non_finite
from ..models import contiguous_lm_head_input
from ..precision import cpu_autocast
from ..rewards.objectives import make_objective
from ..rewards.online import STATE_DIR, OnlineRewardUpdater
from ..shared_base import POLICY, AdapterRole
from ..validation import (
    check_dataset,
    check_pad_id,
    check_reference_source,
    check_reward_model_kind,
    check_tokenizer,
    generation_eos_ids,
)
from .token_rewards import CREDITS, check_credit, token_rewards


def no_bf16_without_gpu(args):
    """TRL's configs turn bf16 on when it is unset, and transformers then refuses to run without a GPU: unset, it
    stays off on a machine without CUDA (and with ``use_cpu``), so a config written for a GPU also runs on CPU."""
    if getattr(args, "bf16", False) is None and (args.use_cpu or not torch.cuda.is_available()):
        args.bf16 = False


def check_trainable_layers(value, name: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a number of blocks >= 1, or None (every block trains), got {value!r}")


@dataclass
class ObjectiveFields:
    """The reward model's objective, shared by the configs that train one: reward pretraining's and every policy
    trainer's (listed before the TRL config it extends). Checks that the objective exists, and that bf16 has a GPU
    or a CPU with bf16 instructions, before the TRL config's own checks."""

    objective: str = field(
        default="bt",
        metadata={
            "config": "reward.objective",
            "help": "IRL loss of the reward model, in pretraining and online updates: 'bt' (Bradley-Terry), 'gail' "
            "(logistic discriminator) or 'airl' (per-token f - log pi).",
        },
    )
    prefix_weight: float = field(
        default=0.0,
        metadata={
            "config": "reward.prefix_weight",
            "help": "Weight of the reward loss on every pair of prefixes (bt, gail): trains the scores that "
            "credit=redistribution reads at intermediate tokens (objectives.RewardObjective.prefix_pair_loss).",
        },
    )

    def __post_init__(self):
        no_bf16_without_gpu(self)
        super().__post_init__()
        make_objective(self.objective, self.prefix_weight)  # fails early on a bad name or weight


@dataclass
class OnlineRewardFields(ObjectiveFields):
    """The online reward model's settings, shared by every trainer config (listed before the TRL config it extends)."""

    demonstration_column: str = field(
        default="demonstration",
        metadata={
            "help": "Dataset column with a demonstration for the row's prompt; it is the positive in reward updates."
        },
    )
    reward_update_every: int = field(
        default=1,
        metadata={
            "config": "reward.online.update_every",
            "help": "Update the reward model every this many generation batches (0 freezes it: a fixed reward model).",
        },
    )
    reward_update_steps: int = field(
        default=2, metadata={"config": "reward.online.update_steps", "help": "Reward-model optimizer steps per update."}
    )
    reward_batch_size: int = field(
        default=32,
        metadata={"config": "reward.online.batch_size", "help": "Demonstration-sample pairs per reward step."},
    )
    reward_learning_rate: float = field(
        default=1e-4,
        metadata={"config": "reward.online.learning_rate", "help": "AdamW learning rate of the reward model."},
    )
    reward_weight_decay: float = field(
        default=1e-4,
        metadata={"config": "reward.online.weight_decay", "help": "AdamW weight decay of the reward model."},
    )
    reward_max_grad_norm: float = field(
        default=1.0,
        metadata={"config": "reward.online.max_grad_norm", "help": "Gradient clipping of the reward model."},
    )
    reward_trainable_layers: int | None = field(
        default=None,
        metadata={
            "config": "reward.online.trainable_layers",
            "help": "Train only the reward model's top this many transformer blocks and its head (None: all of it); "
            "backward stops below them. Applies to reward pretraining too (IRLRewardConfig.trainable_layers).",
        },
    )
    reward_buffer_size: int = field(
        default=1024,
        metadata={
            "config": "reward.online.buffer_size",
            "help": "Replay buffer: the most recent (prompt, demonstration, sample) triples the reward model learns "
            "from.",
        },
    )
    reward_standardize: bool = field(
        default=True,
        metadata={
            "config": "reward.online.standardize",
            "help": "Standardise the IRL reward with running mean/std over all rewards seen (steady scale while the "
            "reward model moves; matters when it is combined with other reward functions).",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_trainable_layers(self.reward_trainable_layers, "reward_trainable_layers")
        for name in ("reward_update_steps", "reward_batch_size", "reward_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("reward_learning_rate", "reward_max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.reward_weight_decay < 0:
            raise ValueError(f"reward_weight_decay must be >= 0, got {self.reward_weight_decay}")
        if self.reward_update_every < 0:
            raise ValueError(
                f"reward_update_every must be >= 0 (0 freezes the reward model), got {self.reward_update_every}"
            )


def check_training_fields(config):
    """The fields of the TRL config beneath ours (GRPOConfig, RLOOConfig) that TRL leaves unchecked and our trainers
    rely on; each config class with a TRL base calls it after its own checks. ``learning_rate`` 0 is allowed: a frozen
    policy (a probe)."""
    for name in ("learning_rate", "beta"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ValueError(f"max_steps must be >= 1 (or -1: num_train_epochs decides), got {config.max_steps}")


@dataclass
class OnlineRewardGRPOConfig(OnlineRewardFields, GRPOConfig):
    """GRPOConfig plus the online reward model's and token credit's settings. KL to the initial (BC) policy is
    GRPO's ``beta`` (a loss term); ``token_kl_coef`` puts a per-token KL penalty in the reward instead."""

    credit: str = field(
        default="sequence",
        metadata={
            "config": "credit.name",
            "help": f"How reward is spread over tokens: one of {list(CREDITS)} "
            "(see trl_irl/trainers/token_rewards.py).",
        },
    )
    credit_gamma: float = field(
        default=1.0,
        metadata={
            "config": "credit.credit_gamma",
            "help": "Discount of token rewards in returns-to-go G_t = sum_k gamma^(k-t) r_k (and GAE's gamma in PPO).",
        },
    )
    attention_mix: float = field(
        default=0.5,
        metadata={
            "config": "credit.attention_mix",
            "help": "credit=attention: share of the reward spread by attention; the rest stays on the last token.",
        },
    )
    implicit_beta: float = field(
        default=1.0,
        metadata={"config": "credit.implicit_beta", "help": "credit=implicit: beta of beta * log q / pi_ref."},
    )
    token_kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "Per-token KL penalty -coef * (log pi - log pi_ref) added to token rewards (needs beta > 0 for the "
            "reference log-probs, or set beta tiny)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_training_fields(self)
        if self.credit not in CREDITS:
            raise ValueError(f"credit={self.credit!r} is unknown: choose one of {list(CREDITS)}")
        if not 0.0 <= self.credit_gamma <= 1.0:
            raise ValueError(f"credit_gamma must be in [0, 1], got {self.credit_gamma}")
        if not 0.0 <= self.attention_mix <= 1.0:
            raise ValueError(f"attention_mix must be in [0, 1], got {self.attention_mix}")
        if self.token_kl_coef and not self.beta:
            raise ValueError("token_kl_coef > 0 needs the reference model's log-probs: set beta > 0")

    @property
    def token_level(self) -> bool:
        return self.credit != "sequence" or self.token_kl_coef > 0


def deepspeed_stage(args) -> int | None:
    """The ZeRO stage ``args`` will run under (``accelerate launch --use_deepspeed`` or ``deepspeed=...``), else
    None."""
    plugin = getattr(args, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


def check_backends(args, model, trainer: str):
    """TRL's switches our trainers can't follow, said at start-up, before a model or a vLLM engine is loaded."""
    if deepspeed_stage(args) == 3:
        raise ValueError(
            f"{trainer} under DeepSpeed ZeRO stage 3 is not supported: it partitions the model's weights, and the "
            "online reward model and a shared base's reward and critic adapters are read outside the engine. Use "
            "ZeRO stage 1 or 2 (`accelerate launch --use_deepspeed --zero_stage 2 ...`) or DDP"
        )
    if args.use_vllm:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        quantised = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
        if quantised or "quantization_config" in (args.model_init_kwargs or {}):
            raise ValueError(
                f"{trainer} with use_vllm=true and a bitsandbytes-quantised policy (quant=4bit/8bit) fails in "
                "TRL 1.16: "
                "the weight sync sends dequantised merged weights that vLLM's engine cannot load "
                "(huggingface/trl#4973). Set use_vllm=false, or quant=none (LoRA on a full-precision base)"
            )


class EpochResumableSampler(torch.utils.data.Sampler):
    """TRL's ``RepeatSampler`` draws each epoch's prompt order from one generator, so epoch e's order depends on the
    e orders drawn before it. A resumed run builds a fresh sampler and skips those epochs without drawing them: past
    an epoch boundary its order differed from the uninterrupted run's. The trainer calls ``set_epoch(e)`` before each
    epoch; the first iteration then draws (and discards) the orders of the epochs it did not iterate."""

    def __init__(self, sampler):
        self.sampler, self.epoch, self.iterated = sampler, 0, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        s = self.sampler
        if getattr(s, "shuffle", False):
            for _ in range(self.epoch - self.iterated):
                torch.randperm(s.num_samples, generator=s.generator)  # as RepeatSampler.__iter__ draws
        self.iterated = max(self.iterated, self.epoch) + 1
        return iter(s)

    def __len__(self):
        return len(self.sampler)


class OnlineRewardMixin:
    """The reward source of every policy trainer: an online-IRL reward model (learning, or fixed with
    ``reward_update_every=0``) and/or plain reward functions. Put it before the TRL trainer in the bases.

    Args:
        model: the policy (a path, so TRL can load the KL reference from it when ``beta > 0``).
        reward_model: the reward model (``models.load_reward_model``; a causal LM for AIRL), or None to train on
            ``reward_funcs`` alone.
        args: a config with ``OnlineRewardFields``.
        train_dataset: column ``prompt``, and ``args.demonstration_column`` when the reward model learns (None on a
            prompt without a demonstration: its samples are paired with one of ``demonstration_dataset``'s).
        demonstration_dataset: the demonstrations such samples are paired with (columns ``prompt`` and
            ``args.demonstration_column``); None: the rows of ``train_dataset`` that have one.
        processing_class: the policy's tokenizer; ``reward_processing_class`` the reward model's (default: same).
        reward_funcs: further reward functions or models, added to the IRL reward as in GRPO.
    """

    def __init__(
        self,
        model,
        reward_model=None,
        args=None,
        train_dataset=None,
        processing_class=None,
        reward_processing_class=None,
        reward_funcs=None,
        demonstration_dataset=None,
        **kwargs,
    ):
        reward_tokenizer = reward_processing_class or processing_class
        check_tokenizer(processing_class, eos_token_ids=generation_eos_ids(model))
        learns = reward_model is not None and args.reward_update_every > 0
        check_dataset(train_dataset, ["prompt", args.demonstration_column] if learns else ["prompt"], "train_dataset")
        demonstrations = []
        if learns:
            column = args.demonstration_column
            source = train_dataset if demonstration_dataset is None else demonstration_dataset
            if demonstration_dataset is not None:
                check_dataset(demonstration_dataset, ["prompt", column], "demonstration_dataset")
            demonstrations = [(p, d) for p, d in zip(source["prompt"], source[column]) if d is not None]
            if not demonstrations:
                raise ValueError(
                    f"the reward model learns from demonstrations, and "
                    f"{'demonstration_dataset' if demonstration_dataset is not None else 'train_dataset'}"
                    f"'s {column!r} column has none: pass demonstration_dataset=... with them"
                )
        if reward_model is None and not reward_funcs:
            raise ValueError("no reward: pass reward_model=... (online IRL or fixed) and/or reward_funcs=[...]")
        objective = make_objective(args.objective, args.prefix_weight)
        if reward_model is not None:
            check_reward_model_kind(reward_model, objective)
        check_reference_source(model, args.beta)
        check_backends(args, model, type(self).__name__)
        self._check_setup(args, objective, reward_model, reward_tokenizer is processing_class)
        funcs = list(reward_funcs or [])
        if reward_model is not None:
            check_tokenizer(reward_tokenizer, "reward_processing_class", generation_eos_ids(model))
            check_pad_id(reward_model, reward_tokenizer)

            def irl_reward(prompts, completions, **_):
                return self.reward_updater.rewards(prompts, completions, self._policy_for_reward()).tolist()

            funcs.insert(0, irl_reward)
        super().__init__(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        contiguous_lm_head_input(self.accelerator.unwrap_model(self.model))  # the policy TRL loaded generates
        self.reward_updater = None
        if reward_model is not None:
            self.reward_updater = OnlineRewardUpdater(
                reward_model.to(self.accelerator.device),
                reward_tokenizer,
                objective,
                learning_rate=args.reward_learning_rate,
                weight_decay=args.reward_weight_decay,
                batch_size=args.reward_batch_size,
                steps=args.reward_update_steps,
                buffer_size=args.reward_buffer_size,
                max_grad_norm=args.reward_max_grad_norm,
                seed=args.seed,
                scoring_batch_size=args.per_device_train_batch_size,  # scored per micro-batch, as TRL's log-probs
                trainable_layers=args.reward_trainable_layers,
                bf16=bool(args.bf16),
                demonstrations=demonstrations,
            )

    def _check_setup(self, args, objective, reward_model, same_tokenizer: bool):
        """Checks a subclass adds before any model is loaded."""

    def _policy_for_reward(self):
        """The policy for objectives that need log pi (AIRL). On a shared base it is the policy's adapter as a role:
        the reward's forward switches to the reward's adapter, and log pi must not."""
        if not self.reward_updater.objective.needs_policy:
            return None
        policy = self.accelerator.unwrap_model(self.model)
        if isinstance(self.reward_updater.model, AdapterRole):
            if getattr(self, "_policy_role", None) is None:
                self._policy_role = AdapterRole(policy, POLICY, "lm")
            return self._policy_role
        return policy

    def _transform_scored(self, output: dict, inputs: list[dict]) -> dict:
        """Runs after TRL scored the batch and before the reward model learns from it (so token credit reads the
        same reward model that scored the batch). Identity here; ``OnlineRewardGRPOTrainer`` puts advantages in."""
        return output

    # --- hooks ------------------------------------------------------------------------------------------------
    def _generate(self, prompts):
        """TRL's generation, under bf16 autocast on CPU when ``bf16`` is on (TRL autocasts the loss, not
        ``generate``; sampling is the step's largest forward work)."""
        with cpu_autocast(self.args.bf16, self.accelerator.device):
            return super()._generate(prompts)

    def _generate_and_score_completions(self, inputs):
        output = self._transform_scored(super()._generate_and_score_completions(inputs), inputs)
        if self.model.training and self.reward_updater is not None and self.args.reward_update_every:
            ids = output["completion_ids"].masked_fill(
                output["completion_mask"] == 0, self.processing_class.pad_token_id
            )
            samples = self.processing_class.batch_decode(ids, skip_special_tokens=True)
            column = self.args.demonstration_column
            self.reward_updater.add([x["prompt"] for x in inputs], [x[column] for x in inputs], samples)
            if self.reward_updater.num_batches % self.args.reward_update_every == 0:
                for key, value in self.reward_updater.update(self._policy_for_reward()).items():
                    self._metrics["train"][f"irl/{key}"].append(value)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's hook, called on the sampled batch: ``score_rewards``."""
        return self.score_rewards(inputs, prompts, completions, completion_ids_list, sampled=True)

    def score_rewards(self, inputs, prompts, completions, completion_ids_list, *, sampled: bool) -> torch.Tensor:
        """Every reward function's score of each completion, gathered over processes (B, n_funcs): TRL's reward
        call, then for the IRL reward a stop on NaN and the running standardisation. ``sampled``: the completions the
        policy learns from (their IRL rewards move the running statistics and are logged as ``irl/raw_reward``);
        False for a baseline's (ReMax's greedy completions), scored with the same statistics, which stay as they are.
        """
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.reward_updater is not None:
            irl = rewards[:, 0]
            if torch.isnan(irl).any():
                raise FloatingPointError(
                    f"the IRL reward model returned NaN for {int(torch.isnan(irl).sum())} of {irl.numel()} completions "
                    f"at step {self.state.global_step}: it has diverged. Lower reward_learning_rate (now "
                    f"{self.args.reward_learning_rate}) or reward_max_grad_norm (reward.online.learning_rate / "
                    "max_grad_norm on the CLI), and resume from the last checkpoint (resume=true; checkpoints are "
                    "checked for NaN before they are written) or an earlier one (resume_from=checkpoint-N)"
                )
            if sampled:
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["irl/raw_reward"].append(irl.mean().item())
            if self.args.reward_standardize:
                if self.model.training and sampled:
                    self.reward_updater.standardizer.update(irl)  # identical on every rank: rewards are gathered
                rewards[:, 0] = self.reward_updater.standardizer(irl)
        return rewards

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, then ours (``_save_own_state``), then the ``COMPLETE`` marker, then the rotation of old
        checkpoints (deferred from TRL's save, so a complete checkpoint is never deleted for a torn one). Nothing is
        written when a trained model holds NaN or inf."""
        bad = non_finite(self.trained_modules())
        if bad:
            raise FloatingPointError(
                f"NaN or inf in {bad[:5]}{' ...' if len(bad) > 5 else ''} at step {self.state.global_step}: training "
                "diverged, and this checkpoint is not written, so the last one stays usable. Lower the learning rates "
                "(learning_rate, reward_learning_rate) and resume (resume=true, or resume_from=checkpoint-N)"
            )
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # TRL's save rotates only with a limit
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        directory = Path(self._checkpoint_dir(trial))
        if self.args.should_save:
            self._save_own_state(directory)
            mark_complete(directory)
            rotate_checkpoints(
                output_dir=self._get_output_dir(trial=trial),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )  # as TRL's
        self.accelerator.wait_for_everyone()

    def _get_train_sampler(self, dataset=None):
        return EpochResumableSampler(super()._get_train_sampler(dataset))

    def _save_own_state(self, directory: Path):
        """What TRL's checkpoint lacks (main process): the online reward model's state."""
        if self.reward_updater is not None:
            self.reward_updater.save(directory / STATE_DIR)

    def trained_modules(self) -> dict:
        """The models this trainer updates, by role, for the NaN check before a save."""
        return {"policy": self.model, "reward": None if self.reward_updater is None else self.reward_updater.model}

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.reward_updater is not None:
            self.reward_updater.load(os.path.join(checkpoint, STATE_DIR))

    def _checkpoint_dir(self, trial) -> str:
        return os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")


ROW_REWARDS = "trl_irl_rewards"  # a sampled batch row's rewards (n_funcs,), from _calculate_rewards to the advantages


def sequence_rewards(per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, n_funcs) rewards -> (B,): the weighted sum over the functions that scored the row (TRL's nansum)."""
    return (per_func * weights.to(per_func.device)).nansum(dim=1)


class OnlineRewardGRPOTrainer(OnlineRewardMixin, GRPOTrainer):
    """GRPO on our reward source (``OnlineRewardMixin``: a reward model that keeps learning from demonstrations, or a
    fixed one, and/or reward functions such as the oracle's verifier), with token-level credit; the base of our other
    algorithms.

    Every run's advantages come from ``compute_advantages``, the default's included: with ``credit=sequence`` the
    returns are the sequence rewards (B, 1) and GRPO's estimator gives TRL's own advantages bit for bit; with token
    credit, token rewards r_t (``trainers/token_rewards.py``) become returns-to-go G_t (B, T), and the (B, T)
    advantages go to TRL's token-level clipped loss as they are.
    """

    # the values of TRL's ``scale_rewards`` this trainer's own advantages honour (the others are refused)
    SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")

    def _check_setup(self, args, objective, reward_model, same_tokenizer):
        check_credit(
            args.credit,
            objective,
            has_reward_model=reward_model is not None,
            beta=args.beta,
            same_tokenizer=same_tokenizer,
        )
        self.check_advantage_settings(args)

    @classmethod
    def check_advantage_settings(cls, args):
        """TRL's advantage settings this trainer's advantages follow, or refuse (callable before a trainer is built:
        the pipeline checks them at start-up)."""
        name = cls.__name__
        if args.scale_rewards not in cls.SCALE_REWARDS:
            raise ValueError(
                f"{name} with scale_rewards={args.scale_rewards!r}: its advantages take "
                f"{list(cls.SCALE_REWARDS)} only (set scale_rewards={cls.SCALE_REWARDS[0]!r}, "
                f"algo.scale_rewards={cls.SCALE_REWARDS[0]} on the CLI)"
            )
        if args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"{name} with multi_objective_aggregation={args.multi_objective_aggregation!r}: every "
                "estimator here takes the weighted sum of the reward functions (TRL's default "
                "'sum_then_normalize'); set multi_objective_aggregation='sum_then_normalize' (or put the "
                "per-function normalisation in a reward function of yours)"
            )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.credit == "attention":  # attention weights need the eager kernel
            self.reward_updater.model.set_attn_implementation("eager")

    # --- the one method each algorithm overrides ---------------------------------------------------------------
    def compute_advantages(self, rewards: torch.Tensor, mask: torch.Tensor, output: dict, inputs: list) -> torch.Tensor:
        """This process's token rewards -> advantages, the one place every estimator is called from.

        Args:
            rewards: (B, T) token rewards r_t (``trainers/token_rewards.py``); (B, 1), the sequence reward, with
                ``credit=sequence`` (TRL's sequence-level loss then takes the advantages' only column).
            mask: (B, T) or (B, 1), 1 on the completion's tokens of scorable rows.
            output: TRL's generation batch (ids, masks, log-probs), for estimators that read the completions.
            inputs: the batch's dataset rows.

        Returns:
            (B, T) advantages, zero where ``mask`` is 0. GRPO: returns-to-go G_t, per-position group mean, group std.
        """
        returns = self.returns_to_go(rewards, mask)
        return self.across_processes(
            lambda g, m: C.grpo_advantages(g, m, self.num_generations, scale=self.scale_rewards), returns, mask
        )

    def returns_to_go(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """G_t = sum_{k >= t} gamma^(k-t) r_k with gamma = ``credit_gamma`` (on (B, 1): the reward itself)."""
        return C.discounted_returns(rewards, mask, self.args.credit_gamma)

    # --- wiring -----------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """The mixin's scoring; in training each of this process's rows (``inputs``) then carries its own rewards
        (n_funcs,) under ``ROW_REWARDS`` to ``local_sequence_rewards``, past TRL's own advantages."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered (B, n)
        if self.model.training:
            start = self.accelerator.process_index * len(inputs)
            for row, own in zip(inputs, rewards[start : start + len(inputs)]):
                row[ROW_REWARDS] = own
        return rewards

    def _transform_scored(self, output, inputs):
        if not self.model.training:  # evaluation: TRL's advantages enter only its eval loss
            return output
        rewards, scorable = self.local_sequence_rewards(inputs)
        if self.args.token_level:
            mask = output["completion_mask"] * scorable[:, None]
            rewards = self.token_rewards(output, rewards, scorable)
        else:  # sequence level: one reward per completion
            rewards, mask = rewards[:, None], scorable[:, None].to(rewards.dtype)
        advantages = self.compute_advantages(rewards, mask, output, inputs)
        output["advantages"] = advantages if self.args.token_level else advantages[:, 0]
        self._log_advantages(advantages, mask)
        return output

    def local_sequence_rewards(self, inputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's sequence rewards (B,), every reward function weighted and summed (TRL's
        ``sum_then_normalize``), and which rows are scorable (B,) bool, from the rewards each row of ``inputs``
        carries (``ROW_REWARDS``, taken out of the row here). A row for which every reward function returned None is
        TRL's unscorable row: its reward is 0 here and the estimators mask it out (no baseline share, no advantage),
        as TRL's advantages do."""
        per_func = torch.stack([row.pop(ROW_REWARDS) for row in inputs])
        return sequence_rewards(per_func, self.reward_weights), ~torch.isnan(per_func).all(dim=1)

    def token_rewards(
        self, output: dict, sequence_rewards: torch.Tensor, scorable: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) token rewards from the configured credit source, checked (``check_credit``), plus the per-token KL
        penalty. ``scorable`` (B,) bool: the rows with a sequence reward (None: all)."""
        args, updater = self.args, self.reward_updater
        scale, shift = 1.0, 0.0  # raw reward-model units -> the trainer's: weight * (s - mean) / std
        if updater is not None:
            scale = float(self.reward_weights[0])
            if args.reward_standardize:
                scale /= updater.standardizer.std + updater.standardizer.eps
                shift = updater.standardizer.mean
        source = CREDITS[args.credit]
        policy_logps = self.policy_logps(output) if source.needs_policy or args.token_kl_coef else None
        ref_logps = self.ref_logps(output) if source.needs_reference or args.token_kl_coef else None
        rewards = token_rewards(
            args.credit,
            output,
            sequence_rewards,
            updater=updater,
            scale=scale,
            shift=shift,
            policy_logps=policy_logps,
            ref_logps=ref_logps,
            args=args,
        )
        mask = output["completion_mask"] if scorable is None else output["completion_mask"] * scorable[:, None]
        self.check_credit(rewards, sequence_rewards, mask)
        if args.token_kl_coef:
            rewards = rewards + C.kl_penalty(policy_logps, ref_logps, output["completion_mask"], args.token_kl_coef)
        return rewards

    def check_credit(self, rewards: torch.Tensor, sequence_rewards: torch.Tensor, mask: torch.Tensor):
        """The credit source's token rewards are (B, T) and keep each completion's sequence reward R (a plugin's too:
        a source that changes R is refused at its first batch), and what it did goes in the logs:
        ``credit/last_token_share``, the mean share of a completion's sum_t |r_t| on its last token (1 for sequence
        credit; lower, the more it spread), and ``credit/sum_gap``, the largest |sum_t r_t - R| (float error for the
        built-in sources, about 1e-7; before the per-token KL penalty)."""
        if rewards.shape != mask.shape:
            raise ValueError(
                f"credit={self.args.credit} returned token rewards of shape {tuple(rewards.shape)} for completions "
                f"of shape {tuple(mask.shape)}: a credit source returns one reward per completion token"
            )
        lengths = mask.sum(dim=1)
        rows = lengths > 0
        if not rows.any():
            return
        last = (mask.cumsum(dim=1) == lengths[:, None]) & mask.bool()
        spread = (rewards.abs() * mask).sum(dim=1)
        shares = ((rewards.abs() * last).sum(dim=1) / spread.clamp_min(1e-12))[rows & (spread > 0)]
        gaps = ((rewards * mask).sum(dim=1) - sequence_rewards).abs()[rows]
        if shares.numel():
            self._metrics["train"]["credit/last_token_share"].append(shares.mean().item())
        self._metrics["train"]["credit/sum_gap"].append(gaps.max().item())
        tolerance = 1e-3 * (1.0 + sequence_rewards[rows].abs().max().item())
        if gaps.max().item() > tolerance:
            row = int(rows.nonzero()[gaps.argmax()])
            raise ValueError(
                f"credit={self.args.credit}: the token rewards of completion {row} sum to "
                f"{(rewards[row] * mask[row]).sum().item():.6g}, its sequence reward is "
                f"{sequence_rewards[row].item():.6g}: a credit source spreads the sequence reward over the tokens, "
                "it must not change it (trl_irl.register_credit)"
            )

    @torch.no_grad()
    def policy_logps(self, output: dict) -> torch.Tensor:
        """log pi(y_t | s_t) of the sampling policy: TRL's old log-probs, computed (and kept) when TRL skipped them."""
        if output.get("old_per_token_logps") is None:
            output["old_per_token_logps"] = self._per_token_logps(self.model, output)
        return output["old_per_token_logps"]

    @torch.no_grad()
    def ref_logps(self, output: dict) -> torch.Tensor:
        """log pi_ref(y_t | s_t): TRL's reference log-probs (present when beta > 0), computed for batches TRL did
        not score (ReMax's greedy completions)."""
        if output.get("ref_per_token_logps") is None:
            if self.ref_model is None:
                raise ValueError("reference log-probs need a reference model: set beta > 0 (with a full model)")
            output["ref_per_token_logps"] = self._per_token_logps(self.ref_model, output)
        return output["ref_per_token_logps"]

    def _per_token_logps(self, model, output: dict) -> torch.Tensor:
        batch = prompt_completion_batch(output)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            output["completion_ids"].size(1),
            batch_size=self.args.per_device_train_batch_size,
        )
        return logps

    def across_processes(self, fn, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply a batch-wide estimator (groups, global statistics) to the returns of all processes; keep ours."""
        n, T = returns.shape
        if self.accelerator.num_processes == 1:
            return fn(returns, mask)
        gather = lambda x: self.accelerator.gather(self.accelerator.pad_across_processes(x, dim=1))  # noqa: E731
        start = self.accelerator.process_index * n
        return fn(gather(returns), gather(mask))[start : start + n, :T]

    def _log_advantages(self, advantages, mask):
        valid = advantages[mask.bool()]
        self._metrics["train"]["advantages/mean"].append(valid.mean().item())
        self._metrics["train"]["advantages/std"].append(valid.std().item() if valid.numel() > 1 else 0.0)
