"""What an online-IRL step costs, what a cheaper reward update costs in reward quality, and what bf16 autocast buys,
on the SmolLM2 recipe's data, model and lengths (or the tiny model's toy task), in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/online_irl_overhead.py --model smollm2_135m \
        --rounds 3 --steps 3 --out benchmarks/results/online_irl_overhead_smollm2.json

Parts, in the order they run (one torch thread; every ratio is a median over rounds or steps):

1. BC (TRL's SFTTrainer, the recipe's ``bc`` settings) for ``--bc-steps`` steps in fp32, then in bf16 autocast, from
   the same initial model and data order: seconds per step (the first step left out) and the losses of both runs
   (``bf16.bc_loss_max_relative_difference``). The run in the model's default precision is the BC policy below.
2. Generation: the BC policy samples 16 prompts at the recipe's completion length, fp32 and bf16 alternating.
3. Reward quality: for each setting in SETTINGS, a reward model built from the BC policy is pretrained as the recipe
   pretrains it (``reward.pretrain``: demonstration preferred over a BC sample of the training prompts) and then
   takes ``--online-updates`` online updates (``reward.online``: batch, learning rate) on the same pairs; after each,
   its pair accuracy on the held-out prompts (demonstration vs a BC sample, ties apart: pairs whose sample equals
   the demonstration are left out), with a paired bootstrap 95% interval of its difference from full depth.
4. Step time: TRL's ``GRPOTrainer`` on the reward model frozen vs ``OnlineRewardGRPOTrainer`` (the reward learning every
   batch) with each setting, 16 completions a step (4 prompts x 4), the recipe's lengths, learning rates and beta;
   arms alternate within each round; ``--steps`` steps per arm per round, the first left out.
   ``ratio_median_of_rounds.online_irl`` is the recipe's default settings against the frozen reward, both in the
   model's default precision; the ``*_fp32`` arms are the same in fp32 (the recipe before this benchmark's settings).

Decision rule (fixed before the run): the recipe's ``reward.online.trainable_layers`` is the smallest k in SETTINGS
whose held-out pair accuracy after pretraining and after the online updates is within 0.03 of full depth's.
The held-out prompts are the recipe's held-out split (``task.seed=0``, every held-out row: 200 of the file's
2,000), the split the recipe's other settings were calibrated on; ``benchmarks/real_lm.py`` reports ``task.seed=1``'s.
Quickest: ``--model tiny --rounds 1 --steps 2 --bc-steps 2 --online-updates 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # the recipe whose data, model and settings each model's run uses
    "smollm2_135m": ["recipe=smollm2_word_reversal", "task.num_heldout=384"],
    "tiny": ["task.num_heldout=256"],
}
# reward-update settings: trainable blocks (None: every parameter) and LoRA (r=16 on every linear of the trunk, the
# head trained in full: PEFT's SEQ_CLS task)
SETTINGS = {
    "smollm2_135m": {"full_depth": None, "layers_1": 1, "layers_2": 2, "layers_4": 4, "layers_8": 8, "lora": "lora"},
    "tiny": {"full_depth": None, "layers_1": 1, "lora": "lora"},
}


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def timed_median(times: list[float]) -> float:
    """Median seconds per step, the first step (warm-up: allocator, first dataloader batch) left out."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def reward_model(bc_path: str, tokenizer, setting):
    from trl_irl.models import load_reward_model

    model = load_reward_model(bc_path, "classifier", tokenizer.pad_token_id)
    if setting == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"))
    return model


# --- 1. BC ---------------------------------------------------------------------------------------------------------
def behaviour_cloning(cfg, pipe, work: Path, steps: int, default_bf16: bool) -> tuple[dict, str]:
    from trl import SFTConfig, SFTTrainer

    c = cfg["bc"]
    train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in pipe.data.train])
    runs = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        timer = StepTimes()
        args = SFTConfig(
            output_dir=str(work / f"bc_{name}"),
            learning_rate=c["learning_rate"],
            max_steps=steps,
            per_device_train_batch_size=c["per_device_train_batch_size"],
            bf16=bf16,
            use_cpu=True,
            seed=cfg["seed"],
            save_strategy="no",
            logging_steps=1,
            report_to="none",
            disable_tqdm=True,
            **c["extra"],
        )
        trainer = SFTTrainer(
            model=pipe.plan.init_path,
            args=args,
            train_dataset=train,
            processing_class=pipe.tokenizer,
            callbacks=[timer],
        )
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs[name] = {"seconds_per_step": timed_median(timer.times), "losses": losses}
        if bf16 == default_bf16:
            bc_path = str(work / "bc")
            trainer.save_model(bc_path)
            pipe.tokenizer.save_pretrained(bc_path)
        del trainer
    difference = max(abs(a - b) / abs(a) for a, b in zip(runs["fp32"]["losses"], runs["bf16"]["losses"]))
    return {
        "fp32": runs["fp32"],
        "bf16": runs["bf16"],
        "speedup": runs["fp32"]["seconds_per_step"] / runs["bf16"]["seconds_per_step"],
        "loss_max_relative_difference": difference,
    }, bc_path


# --- 2. generation ---------------------------------------------------------------------------------------------------
def generation(policy, pipe, rounds: int) -> dict:
    from trl_irl.evaluation import sample_completions

    prompts = [r["prompt"] for r in pipe.data.train[:16]]
    times = {"fp32": [], "bf16": []}
    for r in range(rounds + 1):  # round 0 warms up
        for name in times:
            start = time.perf_counter()
            sample_completions(
                policy, pipe.tokenizer, prompts, pipe.data.max_completion_length, 16, seed=r, bf16=name == "bf16"
            )
            if r:
                times[name].append(time.perf_counter() - start)
    return {
        "seconds_per_batch": {k: statistics.median(v) for k, v in times.items()},
        "speedup": statistics.median([a / b for a, b in zip(times["fp32"], times["bf16"])]),
    }


# --- 3. reward quality ----------------------------------------------------------------------------------------------
def reward_quality(cfg, pipe, bc_path: str, samples: dict, settings: dict, online_updates: int, bf16: bool) -> dict:
    from trl_irl.rewards import make_objective
    from trl_irl.rewards.online import OnlineRewardUpdater
    from trl_irl.statistics import bootstrap_means, interval

    tok, pre, online = pipe.tokenizer, cfg["reward"]["pretrain"], cfg["reward"]["online"]
    objective = make_objective(cfg["reward"]["objective"])
    train, heldout = pipe.data.train, pipe.data.heldout
    kept = [i for i, (r, s) in enumerate(zip(heldout, samples["heldout"])) if s.strip() != r["completion"].strip()]
    prompts = [heldout[i]["prompt"] for i in kept]
    demos, held_samples = [heldout[i]["completion"] for i in kept], [samples["heldout"][i] for i in kept]
    rows, correct = {}, {}
    for name, setting in settings.items():
        torch.manual_seed(cfg["seed"])
        model = reward_model(bc_path, tok, setting)
        steps = math.ceil(len(train) / pre["per_device_train_batch_size"]) * pre["num_train_epochs"]
        updater = OnlineRewardUpdater(
            model,
            tok,
            objective,
            learning_rate=pre["learning_rate"],
            weight_decay=online["weight_decay"],
            batch_size=pre["per_device_train_batch_size"],
            steps=steps,
            buffer_size=len(train),
            max_grad_norm=online["max_grad_norm"],
            seed=cfg["seed"],
            scoring_batch_size=64,
            trainable_layers=None if setting in (None, "lora") else setting,
            bf16=bf16,
        )
        updater.add([r["prompt"] for r in train], [r["completion"] for r in train], samples["train"])

        def accuracy(stage, updater=updater, name=name):  # bound now: the loop deletes updater
            r_demo, r_sample = updater.rewards(prompts, demos), updater.rewards(prompts, held_samples)
            outcome = ((r_demo > r_sample).float() + 0.5 * (r_demo == r_sample).float()).numpy()
            correct[f"{name}/{stage}"] = outcome
            return float(outcome.mean())

        start = time.perf_counter()
        updater.update()
        pretrain_seconds = time.perf_counter() - start
        row = {
            "trainable_parameters": sum(p.numel() for p in updater.params),
            "pretrain_updates": steps,
            "pretrain_seconds_per_update": pretrain_seconds / steps,
            "accuracy_after_pretraining": accuracy("pretrain"),
        }
        for group in updater.optimizer.param_groups:
            group["lr"] = online["learning_rate"]
        updater.batch_size, updater.steps = online["batch_size"], online_updates
        start = time.perf_counter()
        updater.update()
        row |= {
            "online_updates": online_updates,
            "online_seconds_per_update": (time.perf_counter() - start) / online_updates,
            "accuracy_after_online_updates": accuracy("online"),
        }
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        del updater, model
    draws = bootstrap_means({k: v for k, v in correct.items()})
    for name, row in rows.items():
        for stage, key in (("pretrain", "accuracy_after_pretraining"), ("online", "accuracy_after_online_updates")):
            diff = draws[f"{name}/{stage}"] - draws[f"full_depth/{stage}"]
            row[f"{key}_minus_full_depth"] = {"value": row[key] - rows["full_depth"][key], "ci95": interval(diff)}
    return {"heldout_pairs": len(kept), "heldout_ties_left_out": len(heldout) - len(kept), "settings": rows}


# --- 4. step time ----------------------------------------------------------------------------------------------------
def step_times(
    cfg,
    pipe,
    bc_path: str,
    settings: dict,
    default: dict,
    rounds: int,
    steps: int,
    work: Path,
    only: list[str] | None = None,
) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
    from trl_irl.rewards import make_objective

    tok, algo, online = pipe.tokenizer, cfg["algo"], cfg["reward"]["online"]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "demonstration": r["completion"]} for r in pipe.data.train])
    objective = make_objective(cfg["reward"]["objective"])
    common = dict(
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=pipe.data.max_completion_length,
        max_steps=steps,
        learning_rate=algo["learning_rate"],
        beta=algo["beta"],
        temperature=algo["temperature"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=10**6,
        seed=cfg["seed"],
        **algo["extra"],
    )

    def frozen(bf16):
        def build():
            model = reward_model(bc_path, tok, None).eval().requires_grad_(False)

            def frozen_reward(prompts, completions, **_):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return objective.rewards(model, tok, prompts, completions, batch_size=16).tolist()

            return GRPOTrainer(
                model=bc_path,
                reward_funcs=[frozen_reward],
                train_dataset=dataset,
                processing_class=tok,
                args=GRPOConfig(output_dir=str(work / "grpo"), bf16=bf16, **common),
            )

        return build

    def online_irl(setting, bf16):
        def build():
            return OnlineRewardGRPOTrainer(
                model=bc_path,
                reward_model=reward_model(bc_path, tok, setting),
                train_dataset=dataset,
                processing_class=tok,
                args=OnlineRewardGRPOConfig(
                    output_dir=str(work / "irl"),
                    bf16=bf16,
                    reward_batch_size=online["batch_size"],
                    reward_learning_rate=online["learning_rate"],
                    reward_update_steps=online["update_steps"],
                    reward_trainable_layers=None if setting in (None, "lora") else setting,
                    **common,
                ),
            )

        return build

    bf16 = default["bf16"]
    arms = {"grpo_frozen_reward": frozen(bf16), "online_irl": online_irl(default["trainable_layers"], bf16)}
    arms |= {
        f"online_irl_{name}": online_irl(setting, bf16)
        for name, setting in settings.items()
        if setting != default["trainable_layers"]
    }
    if bf16:  # the same in fp32: the recipe before bf16 and a cheaper reward update
        arms |= {"grpo_frozen_reward_fp32": frozen(False), "online_irl_full_depth_fp32": online_irl(None, False)}
    else:  # the model's default is fp32: the frozen-reward step in bf16 is the comparison
        arms |= {"grpo_frozen_reward_bf16": frozen(True)}
    arms = {name: arms[name] for name in only} if only else arms
    times = {name: [] for name in arms}
    for r in range(rounds):
        for name, build in arms.items():
            trainer, timer = build(), StepTimes()
            trainer.add_callback(timer)
            trainer.train()
            times[name].append(timed_median(timer.times))
            print(f"round {r} {name}: {times[name][-1]:.2f} s/step", flush=True)
            del trainer
    if "grpo_frozen_reward" not in times:
        return {"seconds_per_step": {k: statistics.median(v) for k, v in times.items()}}
    base = times["grpo_frozen_reward"]
    return {
        "seconds_per_step": {k: statistics.median(v) for k, v in times.items()},
        "ratio_median_of_rounds": {
            k: statistics.median([b / a for a, b in zip(base, v)])
            for k, v in times.items()
            if k != "grpo_frozen_reward"
        },
        "per_round": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="policy steps per arm per round (the first is warm-up)")
    parser.add_argument("--bc-steps", type=int, default=20)
    parser.add_argument("--online-updates", type=int, default=30)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/online_irl_overhead_<model>.json")
    parser.add_argument(
        "--bc",
        help="this BC folder (one an earlier run kept): parts 1-3 skipped, the step-time arms "
        "alone (--arms), written to --out when given",
    )
    parser.add_argument("--arms", nargs="+", help="with --bc: only these step-time arms")
    opts = parser.parse_args()
    out = Path(opts.out or ROOT / "benchmarks" / "results" / f"online_irl_overhead_{opts.model}.json")
    opts.out = None if opts.bc and not opts.out else str(out)

    from trl_irl.config import compose
    from trl_irl.plan import RunPlan
    from trl_irl.stages.context import open_context

    work = Path(tempfile.mkdtemp(prefix="online_irl_overhead_"))
    cfg = compose(*MODELS[opts.model], output_dir=work / "run")
    pipe = open_context(RunPlan(cfg))
    torch.set_num_threads(1)
    settings = SETTINGS[opts.model]
    default = {"bf16": bool(pipe.plan.bf16), "trainable_layers": cfg["reward"]["online"]["trainable_layers"]}
    result = {
        "setup": {
            "model": opts.model,
            "overrides": MODELS[opts.model],
            "rounds": opts.rounds,
            "steps": opts.steps,
            "bc_steps": opts.bc_steps,
            "online_updates": opts.online_updates,
            "batch": "16 completions (4 prompts x 4)",
            "completion_length": pipe.data.max_completion_length,
            "recipe_defaults": default,
            "threads": 1,
            "torch": torch.__version__,
        }
    }
    if opts.bc:  # the step-time arms alone, from a kept BC (a profile's run; a rerun after a default changed)
        result |= step_times(cfg, pipe, opts.bc, settings, default, opts.rounds, opts.steps, work, opts.arms)
        print(json.dumps(result))
        if opts.out:
            Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
        return
    t0 = time.perf_counter()
    result["bf16"] = {"bc": None, "generation": None}
    result["bf16"]["bc"], bc_path = behaviour_cloning(cfg, pipe, work, opts.bc_steps, default["bf16"])

    from trl_irl.evaluation import sample_completions
    from trl_irl.models import load_causal_lm

    policy = load_causal_lm(bc_path).eval()
    result["bf16"]["generation"] = generation(policy, pipe, opts.rounds)
    samples = {
        split: sample_completions(
            policy,
            pipe.tokenizer,
            [r["prompt"] for r in getattr(pipe.data, split)],
            pipe.data.max_completion_length,
            64,
            seed=cfg["seed"],
            bf16=default["bf16"],
        )
        for split in ("train", "heldout")
    }
    del policy
    result["reward_quality"] = reward_quality(
        cfg, pipe, bc_path, samples, settings, opts.online_updates, default["bf16"]
    )
    result |= step_times(cfg, pipe, bc_path, settings, default, opts.rounds, opts.steps, work)
    seconds = result["seconds_per_step"]
    fp32_frozen = seconds.get("grpo_frozen_reward_fp32")
    result["bf16"]["grpo_frozen_reward_speedup"] = (
        fp32_frozen / seconds["grpo_frozen_reward"]
        if fp32_frozen
        else seconds["grpo_frozen_reward"] / seconds["grpo_frozen_reward_bf16"]
    )
    result["setup"]["wall_seconds"] = round(time.perf_counter() - t0)
    result["setup"]["bc_kept_at"] = bc_path  # for --bc (a profile's run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "ratio_median_of_rounds": result["ratio_median_of_rounds"],
                "bf16": {
                    "bc": result["bf16"]["bc"]["speedup"],
                    "generation": result["bf16"]["generation"]["speedup"],
                    "grpo": result["bf16"]["grpo_frozen_reward_speedup"],
                },
            },
            indent=2,
        )
    )
    print(out)


if __name__ == "__main__":
    main()
