"""One output folder, one run: the lock that keeps a second run out; the overrides the run was started with
(``.hydra/overrides.yaml``), which ``resume=true`` composes its config from again; the config each finished stage was
trained under, which a resume compares with its own before reusing anything; and interrupts (Ctrl-C, SIGTERM) that
end a run with the command that resumes it.

Stages and the config sections that shape them (a stage's sections include those of the stages it starts from, so
a change upstream makes every stage after it differ too):

    bc                seed, task (but its verifier), model, quant, peft, bc
    reward_pretrain   + reward.objective, reward.prefix_weight, reward.pretrain, eval.batch_size (BC samples are
                      drawn in batches of that size)
    <algo>            + all of reward, algo, credit, shared_base, the rollout prompts (task.rollout_*)
    oracle            + task.verifier, task.answer_column, the rollout prompts, algo, credit, shared_base
    spin              + spin, eval.batch_size
    sdft              + sdft, the algo's steps, learning rate, batch and group size
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import yaml

from .checkpoints import atomic_write_text, read_json
from .validation import folder_option, lookup, nest, resume_command

LOCK = ".trl_irl.lock"
STAGE_CONFIG = "stage_config.json"
BASE = ("seed", "task", "model", "quant", "peft", "bc")
VERIFIER_KEYS = ("verifier", "answer_column")  # task keys that shape the oracle alone
ROLLOUT = ("task.rollout_path", "task.num_rollout_prompts", "task.rollout_pool")  # shape the RL arms alone


def stage_sections(stage: str, algo: str) -> tuple[str, ...]:
    """The config sections (dotted for one key of a section) that shape ``stage``."""
    if stage == "bc":
        return BASE
    pretrain = (
        *BASE,
        "reward.objective",
        "reward.prefix_weight",
        "reward.pretrain",
        "reward.online.trainable_layers",  # reward pretraining trains the same top blocks as the online updates
        "eval.batch_size",
    )
    if stage == "reward_pretrain":
        return pretrain
    if stage == algo:
        return (*pretrain, *ROLLOUT, "reward", "algo", "credit", "shared_base")
    if stage == "oracle":
        return (*BASE, "task.verifier", "task.answer_column", *ROLLOUT, "algo", "credit", "shared_base")
    if stage == "spin":
        return (*BASE, "spin", "eval.batch_size")
    if stage == "sdft":  # its budget is the algo's where sdft.* leaves it null
        return (
            *BASE,
            "sdft",
            "algo.max_steps",
            "algo.learning_rate",
            "algo.per_device_train_batch_size",
            "algo.num_generations",
        )
    raise ValueError(f"unknown stage {stage!r}")


def stage_config(cfg: dict, stage: str, algo: str) -> dict:
    """The part of ``cfg`` that shapes ``stage``, as plain JSON values."""
    out = {}
    for section in stage_sections(stage, algo):
        out[section] = lookup(cfg, section)
    if isinstance(out.get("task"), dict):  # the verifier and the rollout prompts shape the RL arms alone (their own
        skip = {*VERIFIER_KEYS, *(key.removeprefix("task.") for key in ROLLOUT)}  # sections)
        out["task"] = {k: v for k, v in out["task"].items() if k not in skip}
    # one key once: "reward.objective" inside "reward" where the stage takes the whole section
    return nest(flatten(json.loads(json.dumps(out))))


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
    return [
        f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, "(unset)") != new.get(key, "(unset)")
    ]


# --- the run's record: the overrides it was started with ------------------------------------------------------
RECORD = Path(".hydra") / "overrides.yaml"  # Hydra writes it as a CLI job starts; trl_irl.run writes the same
RUN_KEYS = ("resume", "resume_from", "retrain_changed", "output_dir")  # how one invocation runs, not the run's config


def write_record(out: Path, overrides: list[str], cfg: dict):
    """What Hydra writes as a CLI job starts, for a run started from Python: ``.hydra/overrides.yaml`` (the
    overrides a resume composes the config from again) and ``.hydra/config.yaml`` (the config, to read)."""

    atomic_write_text(out / RECORD, yaml.safe_dump([o for o in overrides if key_of(o) != "output_dir"]))
    atomic_write_text(out / RECORD.with_name("config.yaml"), yaml.safe_dump(cfg, sort_keys=False))


def key_of(override: str) -> str:
    """The key an override sets (``+algo.beta=0.1`` -> ``algo.beta``; ``algo=ppo`` -> ``algo``)."""
    return override.lstrip("+~").split("=", 1)[0]


def resume_overrides(out: Path, given: list[str]) -> list[str]:
    """The overrides a resumed run composes its config from: those the run in ``out`` was started with (its
    ``RECORD``; none where there is no record), less any whose key a ``given`` one sets, then the ``given`` ones. A
    given ``key=value`` whose recorded one was added with ``+`` keeps the ``+``."""

    path = Path(out) / RECORD
    recorded = yaml.safe_load(path.read_text()) if path.exists() else []
    given_keys = {key_of(o) for o in given}
    added = {key_of(o) for o in recorded if o.startswith("+")}
    kept = [o for o in recorded if key_of(o) not in given_keys and key_of(o) not in RUN_KEYS]
    return kept + ["+" + o if key_of(o) in added and not o.startswith(("+", "~")) else o for o in given]


def wants_resume(overrides: list[str]) -> bool:
    """Whether ``overrides`` ask for ``resume=true``."""
    values = [o.split("=", 1)[1].strip().lower() for o in overrides if "=" in o and key_of(o) == "resume"]
    return bool(values) and values[-1] == "true"


@contextlib.contextmanager
def resumable(out: Path):
    """Inside: SIGTERM ends the run as Ctrl-C (SIGINT) does, with a ``KeyboardInterrupt`` (``Terminated`` for
    SIGTERM), so the lock is released and files are left as a crash leaves them (checkpoints are written as a unit: a
    torn one is set aside on resume). Either prints one line with the exact command that resumes the run (on the main
    process), then the interrupt goes on up."""

    def terminate(signum, frame):
        TERMINATING.set()
        raise Terminated()

    TERMINATING.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        yield
    except KeyboardInterrupt as interrupt:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):  # closed now, or they redraw under the message at exit
            bar.close()
        if os.environ.get("RANK", "0") == "0":
            how = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
            print(
                f"trl-irl: interrupted ({how}); what was trained up to the last complete checkpoint is kept. "
                f"Resume with: {resume_command(out)}",
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt (``resumable``)."""


TERMINATING = threading.Event()  # set by ``resumable``'s SIGTERM handler, for ``raise_if_terminated``


def raise_if_terminated():
    """Raise ``Terminated`` again if a SIGTERM came: its first one can be lost (raised inside a finaliser, where Python
    only prints it, or caught by library code), and the run would go on to the end. Called as each stage begins and
    after every training step (``termination_check``)."""
    if TERMINATING.is_set():
        raise Terminated()


def termination_check():
    """A trainer callback: ``raise_if_terminated`` after every step."""
    from transformers import TrainerCallback

    class TerminationCheck(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise_if_terminated()

    return TerminationCheck()


def write_stage_config(stage_dir: Path, config: dict):
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / STAGE_CONFIG, json.dumps(config, indent=2))


def check_resume(out: Path, stages: list[str], cfg: dict, algo: str, *, retrain_changed: bool) -> tuple[list, list]:
    """Before a resumed run reuses anything (reads only): every stage folder in ``out`` must have been trained under the
    config this run gives it. A differing stage is refused (the error lists the keys) unless ``retrain_changed``.
    Returns (the stages reused or continued, the stages to train again)."""

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
        lines = "; ".join(f"{stage}: " + "; ".join(diff) for stage, diff in changed.items())
        raise ValueError(
            f"resume=true: {out} was trained under another config, so reusing it would mix two runs "
            f"({lines}). Leave out the overrides that change a trained stage, choose a new output folder "
            f"({folder_option()}), or add retrain_changed=true to train these stages again (their "
            "folders are removed)"
        )
    return reused, list(changed)


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

    @staticmethod
    def check(out: Path):
        """Reads only: raise as ``__enter__`` would when a live run holds ``out`` (a run checks this before it writes
        anything; taking the lock checks it again)."""
        lock = RunLock(out)
        if lock.path.exists() and not lock._stale(owner := lock._owner()):
            lock._refuse(owner)

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _stale(owner: dict) -> bool:
        """The lock of a process of this host that is gone."""
        pid = owner.get("pid")
        return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
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
        owner = self._owner()
        if not self._stale(owner):
            self._refuse(owner)
        self.log(
            f"{self.path}: the run that held it (pid {owner['pid']}, started {owner.get('started')}) is gone; "
            "taking the folder over"
        )
        self.path.unlink(missing_ok=True)

    def _refuse(self, owner: dict):

        pid, host = owner.get("pid"), owner.get("host")
        if not owner:  # unreadable: a run is writing it this instant, or it is damaged
            raise RuntimeError(
                f"{self.path.parent} is locked by {self.path}, which cannot be read: if no run uses "
                "the folder, delete the lock file"
            )
        where = "this host" if host == socket.gethostname() else f"host {host}"
        raise RuntimeError(
            f"{self.path.parent} is in use by another run (pid {pid} on {where}, started "
            f"{owner.get('started')}): two runs in one folder overwrite each other's models. Choose "
            f"another output folder ({folder_option()}), or wait for that run to finish"
            + ("" if host == socket.gethostname() else "; if it is gone, delete " + str(self.path))
        )

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False
