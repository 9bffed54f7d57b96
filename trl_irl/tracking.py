"""Experiment tracking with wandb: the job's run, and each stage's metrics under the stage's own keys."""

from __future__ import annotations

import os

from transformers.integrations import WandbCallback
from transformers.integrations.integration_utils import rewrite_logs


def wandb_mode(logger: dict, environ) -> str:
    """WANDB_MODE when set; online under ``wandb agent`` (it sets WANDB_SWEEP_ID: the sweep reads the runs' metrics
    from the server); else ``logger.mode`` (offline by default: no server, never block on the network)."""
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    return "online" if environ.get("WANDB_SWEEP_ID") else logger.get("mode", "offline")


def start_wandb(cfg: dict):
    """The job's wandb run when ``logger.report_to=wandb`` (one run holds every stage), else None."""
    logger = cfg["logger"]
    if logger["report_to"] != "wandb":
        return None
    import wandb  # only when asked for: its import is slow

    os.environ["WANDB_MODE"] = wandb_mode(logger, os.environ)
    os.environ.setdefault("WANDB_PROJECT", logger.get("project", "trl-irl"))
    return wandb.init(project=os.environ["WANDB_PROJECT"], config=cfg, dir=cfg["output_dir"])


def stage_wandb(stage: str):
    """transformers' wandb callback, with every key of a stage under the stage's name (``bc/eval/loss``,
    ``reward_pretrain/eval/loss``, ``grpo/train/reward``) and its own step axis (``<stage>/global_step``): one wandb
    run holds every stage of the job, so the stages' ``eval/loss`` and steps must not run into each other."""

    class StageWandb(WandbCallback):
        def setup(self, args, state, model, **kwargs):
            super().setup(args, state, model, **kwargs)
            if self._wandb is not None and state.is_world_process_zero and self._wandb.run is not None:
                self._wandb.define_metric(f"{stage}/global_step")
                self._wandb.define_metric(f"{stage}/*", step_metric=f"{stage}/global_step", step_sync=True)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self._wandb is None:
                return
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and logs:
                logged = {f"{stage}/{k}": v for k, v in rewrite_logs(logs).items()}
                self._wandb.log({**logged, f"{stage}/global_step": state.global_step})

    return StageWandb()
