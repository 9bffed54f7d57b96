"""What every stage reads: the plan, its tokenizer and rows, the models by role, the run folder and the stage runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import build_tiny_causal_lm, save_model
from ..plan import RunPlan
from ..roles import Roles
from ..tasks import TaskData
from .runner import StageRunner

# Each sampling draw of a run has a seed of its own, an offset plus the run's seed (SPIN's also its round, 100 per
# seed), so that a rerun repeats every draw and, for seeds below 10, no two draws share random numbers.
SAMPLING_SEEDS = {
    "reward_pretrain_train": 3000,  # BC's samples that reward pretraining prefers the demonstrations over
    "reward_pretrain_validation": 4000,
    "evaluation": 5000,  # one sample per held-out prompt and arm
    "spin": 6000,
    "rerank": 7000,  # BC's samples the learned reward reranks (reward diagnostics)
    "temperature": 8000,  # BC at each temperature on the validation rows (bc@T*)
}


@dataclass
class Context:
    """The run's shared state, passed to every stage: ``plan`` (config, arms, trainer configs), ``tokenizer`` and
    ``data`` (the plan's), ``roles`` (the one provider of models: full, LoRA or one shared base), ``out`` (the run
    folder) and ``runner`` (done markers, resume, main-process writes, timing)."""

    plan: RunPlan
    roles: Roles
    runner: StageRunner

    @property
    def cfg(self) -> dict:
        return self.plan.cfg

    @property
    def tokenizer(self):
        return self.plan.tokenizer

    @property
    def data(self) -> TaskData:
        return self.plan.data

    @property
    def out(self) -> Path:
        return self.plan.out

    def seed(self, draw: str, round_: int = 0) -> int:
        """The seed of a sampling draw (``SAMPLING_SEEDS``)."""
        seed = self.cfg["seed"]
        return SAMPLING_SEEDS[draw] + (100 * seed + round_ if draw == "spin" else seed)


def open_context(plan: RunPlan, runner: StageRunner | None = None) -> Context:
    """The run's context: torch seeded and threaded, the notes said, the initial model in place (built from a config
    for ``model=tiny``, saved under ``init/``) and the roles' provider. ``runner``: the run's (a new one if None)."""
    cfg, state = plan.cfg, plan.state
    runner = runner or StageRunner(plan)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    plan.out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        for note in plan.notes:
            print(note, flush=True)
        if plan.data.report:
            print(f"task: {json.dumps(plan.data.report)}", flush=True)
    m = cfg["model"]
    if plan.builds_init_model:  # the tiny model, built from a config
        max_positions = 2 * (plan.data.max_prompt_length + plan.data.max_completion_length)
        model = build_tiny_causal_lm(
            plan.tokenizer,
            m["hidden_size"],
            m["num_layers"],
            m["num_heads"],
            m["intermediate_size"],
            max_positions=max_positions,
            seed=cfg["seed"],
        )
        runner.on_main(save_model, model, plan.tokenizer, plan.init_path)
    roles = Roles(
        plan.init_path,
        plan.tokenizer,
        cfg["peft"],
        cfg["quant"],
        shared_base=bool(cfg["shared_base"]),
        critic=plan.spec.critic,
        device=state.device,
    )
    return Context(plan, roles, runner)
