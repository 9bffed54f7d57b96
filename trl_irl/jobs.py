"""The jobs ``trl-irl`` runs, and the one way each ends.

Every job is checked whole before it starts (``Job.check``: a refusal writes nothing), then computes a result (a
JSON-able dict); ``finish`` writes it atomically, reports it (a table on the console, its figures beside the JSON)
and returns the JSON's path, which the CLI prints as its last line.

=================  ===========================================  ====================================
job                what it does                                 writes
=================  ===========================================  ====================================
pipeline           BC, online IRL, the oracle, SPIN; evaluation  metrics.json, metrics.png
prompt_oirl        offline IRL for prompt selection (extra)      metrics.json, success_vs_k.png
compounding_error  BC vs online IRL across horizons (a study)    compounding_error.json, .md, PNGs
=================  ===========================================  ====================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import atomic_write_text
from .validation import Refused, refusing


def finish(result: dict, path: Path, report: Callable[[dict, Path], object] | None = None, indent: int = 2) -> Path:
    """Write ``result`` to ``path`` atomically (a finished job is never half-written), then ``report(result, path)``
    (the console table and the figures beside it); returns ``path``."""
    path = atomic_write_text(path, json.dumps(result, indent=indent))  # makes the folder too
    if report is not None:
        report(result, path)
    return path


def wandb_mode(logger: dict, environ) -> str:
    """WANDB_MODE when set; online under ``wandb agent`` (it sets WANDB_SWEEP_ID: the sweep reads the runs' metrics
    from the server); else ``logger.mode`` (offline by default: no server, never block on the network)."""
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    return "online" if environ.get("WANDB_SWEEP_ID") else logger.get("mode", "offline")


def _start_logger(cfg: dict):
    logger = cfg["logger"]
    if logger["report_to"] != "wandb":
        return None
    import os

    import wandb

    os.environ["WANDB_MODE"] = wandb_mode(logger, os.environ)
    os.environ.setdefault("WANDB_PROJECT", logger.get("project", "trl-irl"))
    return wandb.init(project=os.environ["WANDB_PROJECT"], config=cfg, dir=cfg["output_dir"])


def stage_wandb(stage: str):
    """transformers' wandb callback, with every key of a stage under the stage's name (``bc/eval/loss``,
    ``reward_pretrain/eval/loss``, ``grpo/train/reward``) and its own step axis (``<stage>/global_step``): one wandb
    run holds every stage of the job, so the stages' ``eval/loss`` and steps must not run into each other."""
    from transformers.integrations import WandbCallback
    from transformers.integrations.integration_utils import rewrite_logs

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


def _check_pipeline(cfg: dict):
    from .pipeline import Pipeline

    with refusing(RuntimeError):  # RuntimeError: the run folder is in use by another run
        return Pipeline(cfg)  # its constructor is the pipeline's whole check: config, files, data, folder


def _pipeline(pipeline) -> Path | None:
    """The main job, logged to wandb when ``logger=wandb``; None on the other processes of ``accelerate launch``."""
    cfg = pipeline.cfg
    run = _start_logger(cfg) if pipeline.state.is_main_process else None
    path = pipeline.run()
    if not pipeline.state.is_main_process:  # several processes: one reports
        return None
    if run is not None:
        arms = json.loads(path.read_text())["arms"]
        run.summary.update({f"{arm}/{k}": v for arm, values in arms.items() for k, v in values.items()})
        # the trained arm under one name too, so a sweep over algorithms has one metric to optimise
        run.summary.update({f"policy/{k}": v for k, v in arms[pipeline.algo].items()})
        run.finish()
    return path


def _check_prompt_oirl(cfg: dict):
    from .prompt_oirl import check_installed

    with refusing():
        check_installed()
    from .prompt_oirl.experiment import check

    return cfg, check(cfg)


def _prompt_oirl(checked) -> Path:
    from .prompt_oirl.experiment import run

    cfg, logs = checked
    return run(cfg, Path(cfg["output_dir"]).resolve(), logs)


def _check_compounding_error(cfg: dict):
    from .compounding.experiment import check

    return cfg, check(cfg)


def _compounding_error(checked) -> Path:
    from .compounding.experiment import run

    cfg, (study, mode) = checked
    return run(study, mode, Path(cfg["output_dir"]).resolve())


@dataclass(frozen=True)
class Job:
    """A job ``trl-irl`` runs. ``check(cfg)`` makes every check of the composed config and the files it names before
    anything runs (a bad one raises ``Refused``; it writes nothing, so a refusal leaves no trace) and returns what
    ``run`` takes; ``run(checked)`` does the work and returns its result's path (None on the other processes of
    ``accelerate launch``)."""

    check: Callable[[dict], object]
    run: Callable[[object], Path | None]


JOBS: dict[str, Job] = {
    "pipeline": Job(_check_pipeline, _pipeline),
    "prompt_oirl": Job(_check_prompt_oirl, _prompt_oirl),
    "compounding_error": Job(_check_compounding_error, _compounding_error),
}


def job(name: str) -> Job:
    if name not in JOBS:
        raise Refused(f"job={name!r} is unknown: choose one of {sorted(JOBS)}")
    return JOBS[name]
