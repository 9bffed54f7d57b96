"""One output folder, one run: the lock that keeps a second run out, and the config each finished stage was trained
under, which ``resume=true`` compares with the run's own before reusing anything.

Stages and the config sections that shape them (a stage's sections include those of the stages it starts from, so
a change upstream makes every stage after it differ too):

    bc                seed, task (but its verifier), model, quant, peft, bc
    reward_pretrain   + reward.objective, reward.prefix_weight, reward.pretrain, eval.batch_size (BC samples are
                      drawn in batches of that size)
    <algo>            + all of reward, algo, credit, shared_base
    oracle            + task.verifier, task.answer_column, algo, credit, shared_base
    spin              + spin, eval.batch_size
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from pathlib import Path

from .checkpoints import atomic_write_text, read_json
from .validation import lookup

LOCK = ".trl_irl.lock"
STAGE_CONFIG = "stage_config.json"
BASE = ("seed", "task", "model", "quant", "peft", "bc")
VERIFIER_KEYS = ("verifier", "answer_column")  # task keys that shape the oracle alone


def stage_sections(stage: str, algo: str) -> tuple[str, ...]:
    """The config sections (dotted for one key of a section) that shape ``stage``."""
    if stage == "bc":
        return BASE
    pretrain = (*BASE, "reward.objective", "reward.prefix_weight", "reward.pretrain", "eval.batch_size")
    if stage == "reward_pretrain":
        return pretrain
    if stage == algo:
        return (*pretrain, "reward", "algo", "credit", "shared_base")
    if stage == "oracle":
        return (*BASE, "task.verifier", "task.answer_column", "algo", "credit", "shared_base")
    if stage == "spin":
        return (*BASE, "spin", "eval.batch_size")
    raise ValueError(f"unknown stage {stage!r}")


def stage_config(cfg: dict, stage: str, algo: str) -> dict:
    """The part of ``cfg`` that shapes ``stage``, as plain JSON values."""
    out = {}
    for section in stage_sections(stage, algo):
        out[section] = lookup(cfg, section)
    if isinstance(out.get("task"), dict):  # the verifier only scores, and trains the oracle alone (its own sections)
        out["task"] = {k: v for k, v in out["task"].items() if k not in VERIFIER_KEYS}
    return json.loads(json.dumps(out))


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: value}


def config_changes(stored: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every dotted key that differs."""
    old, new = flatten(stored), flatten(current)
    return [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key, "(unset)") != new.get(key, "(unset)")]


def write_stage_config(stage_dir: Path, config: dict):
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / STAGE_CONFIG, json.dumps(config, indent=2))


def check_resume(out: Path, stages: list[str], cfg: dict, algo: str, retrain_changed: bool, log=print) -> list[str]:
    """Before a resumed run reuses anything: every stage folder in ``out`` must have been trained under the config
    this run gives it. A differing stage is refused (the error lists the keys), or with ``retrain_changed`` its
    folder is removed, so it trains again. Returns the stages that will be reused or continued."""
    changed, reused = {}, []
    for stage in stages:
        stage_dir = out / stage
        if not stage_dir.exists():
            continue
        path = stage_dir / STAGE_CONFIG
        if not path.exists():
            changed[stage] = ["(no stage_config.json: written by an older trl-irl, or not by this pipeline)"]
            continue
        diff = config_changes(read_json(path), stage_config(cfg, stage, algo))
        if diff:
            changed[stage] = diff
        else:
            reused.append(stage)
    if changed and not retrain_changed:
        lines = "\n".join(f"  {stage}: " + "; ".join(diff) for stage, diff in changed.items())
        raise ValueError(f"resume=true: {out} was trained under another config, so reusing it would mix two runs.\n"
                         f"{lines}\nRun with the config it was trained under, choose a new output folder "
                         "(hydra.run.dir=...), or add retrain_changed=true to train these stages again (their folders "
                         "are removed)")
    for stage in changed:
        log(f"resume: {stage} was trained under another config; retraining it (retrain_changed=true)")
        shutil.rmtree(out / stage)
    return reused


# --- the lock -----------------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """``<output_dir>/.trl_irl.lock`` holds the pid, host and start time of the run using the folder. A second run
    into the folder is refused while that process lives; the lock of a dead process (same host) is taken over with
    a message. Use as a context manager; released on exit, also when the run fails."""

    def __init__(self, out: Path, log=print):
        self.path, self.log, self.held = Path(out) / LOCK, log, False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RuntimeError(f"could not take the lock {self.path}")

    def _take_over_if_stale(self):
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            owner = {}
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            self.log(f"{self.path}: the run that held it (pid {pid}, started {owner.get('started')}) is gone; "
                     "taking the folder over")
            self.path.unlink(missing_ok=True)
            return
        if not owner:  # unreadable: a run is writing it this instant, or it is damaged
            raise RuntimeError(f"{self.path.parent} is locked by {self.path}, which cannot be read: if no run uses "
                               "the folder, delete the lock file")
        where = "this host" if host == socket.gethostname() else f"host {host}"
        raise RuntimeError(f"{self.path.parent} is in use by another run (pid {pid} on {where}, started "
                           f"{owner.get('started')}): two runs in one folder overwrite each other's models. Choose "
                           "another output folder (hydra.run.dir=...), or wait for that run to finish"
                           + ("" if host == socket.gethostname() else "; if it is gone, delete " + str(self.path)))

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False
