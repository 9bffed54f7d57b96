"""Files written as a unit: atomic writers, the marker that makes a policy checkpoint complete, and the choice of
the checkpoint a resumed run continues from.

A ``checkpoint-N`` folder is written by TRL (policy, optimizer, scheduler, RNG, trainer state), then by us (the
online reward model, the critic); only then does ``COMPLETE`` appear in it, listing every file with its size. A
checkpoint without the marker, or with a file missing or of another size (a torn write, a truncated copy), is not
resumed from: ``select_checkpoint`` sets it aside as ``checkpoint-N.torn`` (nothing is deleted) and takes the newest
complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file

COMPLETE = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@contextlib.contextmanager
def atomic_directory(directory: str | Path):
    """Yields an empty sibling folder to write into; when the block ends it takes ``directory``'s place, and the old
    content is removed only after that: a crash mid-write leaves the previous state (or nothing) in place."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp"):
    """Yields a unique temporary path beside ``path`` (ending in ``suffix``, for writers that insist on one, as
    ``np.savez`` on ``.npz``); when the block ends it is renamed to ``path``. A crash mid-write leaves what ``path``
    had, and two writers never share a temporary file. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``path`` gets ``text`` whole or keeps what it had (``atomic_file``); returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_safetensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file in ``directory`` (sharded checkpoints included); {} if none. A
    file that cannot be read (truncated, not safetensors) is named in the error."""

    weights = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            weights.update(load_file(f))
        except Exception as error:  # safetensors raises its own error type, without the path
            raise OSError(
                f"{f} cannot be read ({type(error).__name__}: {error}): the file is damaged or was cut "
                "short; resume from another checkpoint (resume_from=checkpoint-N) or retrain that stage"
            ) from None
    return weights


def load_weights(module: torch.nn.Module, directory: str | Path, writer: str):
    """``module``'s weights from the safetensors in ``directory``, in place; a folder without any names ``writer``,
    what should have written them."""
    weights = read_safetensors(directory)
    if not weights:
        raise FileNotFoundError(f"no weights in {directory}: was it written by {writer}?")
    module.load_state_dict(weights)


def read_json(path: str | Path) -> dict:
    """A JSON file, its path named when it cannot be parsed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise OSError(f"{path} is not valid JSON ({error}): the file is damaged or was cut short") from None


# --- policy checkpoints -----------------------------------------------------------------------------------------
def mark_complete(checkpoint: str | Path):
    """Write ``COMPLETE`` into ``checkpoint``: every file below it with its size. Call it last."""
    checkpoint = Path(checkpoint)
    files = {
        str(p.relative_to(checkpoint)): p.stat().st_size
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }
    atomic_write_text(checkpoint / COMPLETE, json.dumps({"files": files}, indent=0))


def torn_reason(checkpoint: str | Path) -> str | None:
    """None when ``checkpoint`` is complete; else why not."""
    checkpoint = Path(checkpoint)
    marker = checkpoint / COMPLETE
    if not marker.exists():
        return f"no {COMPLETE} marker (the write was interrupted, or an older trl-irl wrote it)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return f"its {COMPLETE} marker is damaged"
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(stage_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of a stage, newest first."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    found = [p for p in stage_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def set_aside(checkpoint: Path, suffix: str) -> Path:
    """Rename ``checkpoint`` out of the trainer's sight (``checkpoint-N.<suffix>``, numbered if taken): kept, never
    resumed from, never overwritten by a later save of step N."""
    target, k = checkpoint.with_name(f"{checkpoint.name}.{suffix}"), 1
    while target.exists():
        k += 1
        target = checkpoint.with_name(f"{checkpoint.name}.{suffix}{k}")
    checkpoint.rename(target)
    return target


def check_requested(stage_dir: str | Path, requested: str, label: str | None = None) -> Path:
    """``stage_dir/requested`` when it is a complete checkpoint; else an error naming ``label`` (``requested`` as the
    user wrote it) and the checkpoints there. Reads only: a run checks ``resume_from`` with it before any stage."""
    checkpoints = list_checkpoints(stage_dir)
    label = label or requested
    chosen = Path(stage_dir) / requested
    if chosen not in checkpoints:
        names = [p.name for p in checkpoints] or "none"
        raise ValueError(f"resume_from={label}: no such checkpoint in {stage_dir} (there: {names})")
    reason = torn_reason(chosen)
    if reason:
        raise ValueError(
            f"resume_from={label}: {chosen} is not complete ({reason}); pick another: "
            f"{[p.name for p in checkpoints if not torn_reason(p)] or 'none is complete'}"
        )
    return chosen


def select_checkpoint(
    stage_dir: str | Path, requested: str | None = None, log=print, label: str | None = None
) -> Path | None:
    """The checkpoint a resumed stage continues from: ``requested`` (a name ``checkpoint-N``) or the newest complete
    one. Torn checkpoints newer than it are set aside as ``.torn``; with ``requested``, complete ones newer than it
    as ``.unused`` (training will write those steps again). None: nothing to resume from. ``label``: ``requested``
    as the user wrote it, for errors."""
    checkpoints = list_checkpoints(stage_dir)
    if requested is not None:
        chosen = check_requested(stage_dir, requested, label)
    else:
        chosen = next((p for p in checkpoints if torn_reason(p) is None), None)
    for p in checkpoints:
        if chosen is not None and checkpoint_step(p) <= checkpoint_step(chosen):
            break
        reason = torn_reason(p)
        moved = set_aside(p, "torn" if reason else "unused")
        log(
            f"resume: {p} {'is torn (' + reason + ')' if reason else 'is newer than resume_from'}; set aside as "
            f"{moved.name}"
        )
    return chosen


def non_finite(modules: dict[str, torch.nn.Module]) -> list[str]:
    """Names ``role.parameter`` of floating-point parameters holding NaN or inf (quantised weights are skipped)."""
    bad = []
    for role, module in modules.items():
        if module is None:
            continue
        for name, p in module.named_parameters():
            if p.is_floating_point() and not torch.isfinite(p.detach()).all():
                bad.append(f"{role}.{name}")
    return bad
