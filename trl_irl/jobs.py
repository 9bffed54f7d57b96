"""The jobs ``trl-irl`` runs, and the one way each ends.

Every job is checked whole before it starts (``Job.check``: a refusal writes nothing), then computes a result (a
JSON-able dict); ``results.finish`` writes it atomically, reports it (a table on the console, its figures beside the
JSON) and returns the JSON's path, which the CLI prints as its last line. Each job imports its own stack when it is
chosen (TRL alone takes about 7 s to import, and the prompt_oirl job never needs it).

=================  ===========================================  ====================================
job                what it does                                 writes
=================  ===========================================  ====================================
pipeline           BC, online IRL, oracle, SPIN, SDFT; evaluation metrics.json, metrics.png
prompt_oirl        offline IRL for prompt selection (extra)      metrics.json, success_vs_k.png
compounding_error  BC vs online IRL across horizons (a study)    compounding_error.json, .md, PNGs
=================  ===========================================  ====================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .validation import Refused, refusing


def _check_pipeline(cfg: dict):
    from .plan import RunPlan

    with refusing(RuntimeError):  # RuntimeError: the run folder is in use by another run
        return RunPlan(cfg)  # the run's whole check: config, files, data, trainer configs, folder


def _pipeline(plan) -> Path | None:
    """The main job, logged to wandb when ``logger=wandb``; None on the other processes of ``accelerate launch``."""
    from .pipeline import run as run_pipeline
    from .tracking import start_wandb

    run = start_wandb(plan.cfg) if plan.state.is_main_process else None
    path = run_pipeline(plan)
    if not plan.state.is_main_process:  # several processes: one reports
        return None
    if run is not None:
        arms = json.loads(path.read_text())["arms"]
        run.summary.update({f"{arm}/{k}": v for arm, values in arms.items() for k, v in values.items()})
        if plan.algo in arms:  # the trained arm under one name too, so a sweep over algorithms has one metric
            run.summary.update({f"policy/{k}": v for k, v in arms[plan.algo].items()})
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
