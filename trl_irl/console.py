"""What a run shows on the console, and what it keeps in files.

The console gets a header per stage, one progress bar per training stage with a compact line for each log event
(the metrics that matter: loss, reward, IRL accuracy, KL, success), the results table and the result's path last.
Every log event of every trainer goes whole to ``train.log`` in the run folder (JSON lines, with the stage), and
dependency noise (deprecation warnings, bitsandbytes' optional-kernel notice, DeepSpeed's accelerator line, model
load reports) stays out of the console but in the job's log file (Hydra's ``<job>.log``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

# (log key, label) shown in a compact line when the event has it, in this order
SHOWN = (
    ("loss", "loss"),
    ("eval_loss", "eval loss"),
    ("reward", "reward"),
    ("irl/accuracy", "irl acc"),
    ("irl/loss", "irl loss"),
    ("kl", "kl"),
    ("value_loss", "value loss"),
    ("rewards/verifier/mean", "verifier"),
    ("train_loss", "train loss"),
    ("train_runtime", "s"),
)
# loggers whose warnings are notices about the stack, not about the run (kept in the log file)
NOISY = (
    "bitsandbytes",
    "DeepSpeed",
    "deepspeed",
    "accelerate",
    "transformers",
    "datasets",
    "py.warnings",
    "torch",
    "sentence_transformers",
    "lightgbm",
)


def compact(logs: dict) -> str:
    parts = []
    for key, label in SHOWN:
        value = logs.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{value:.4g} s" if label == "s" else f"{label} {value:.4g}")
    return ", ".join(parts)


def never_rewarded(history: list[dict], key: str = "rewards/verifier/mean") -> bool:
    """Whether a stage logged ``key`` and it was 0 in every event (the oracle's verifier never rewarded a sample)."""
    values = [event[key] for event in history if isinstance(event.get(key), (int, float))]
    return bool(values) and not any(values)


def stage_progress(stage: str, train_log: Path | None):
    """Transformers' progress bars, with each log event as one compact line (not the whole dict) and the whole
    event appended to ``train_log`` (main process). (Built on first use: this module is imported before the
    console's filter is in place, and transformers' trainer imports warn.)"""
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        def __init__(self):
            super().__init__()
            self.stage, self.train_log, self.shown_at, self.evaluations = stage, train_log, None, 0

        def shows(self, logs: dict, step: int, max_steps: int) -> bool:
            """About ten lines a stage: the final summary; evaluations 1, 2, 4, 8, ... (an early-stopped BC
            evaluates every epoch of up to 100); a training event when a tenth of the steps has passed since the
            last one shown."""
            if "train_runtime" in logs:
                return True
            if any(k.startswith("eval_") for k in logs):
                self.evaluations += 1
                return self.evaluations & (self.evaluations - 1) == 0  # a power of two
            if self.shown_at is not None and step - self.shown_at < max(1, max_steps // 10):
                return False
            self.shown_at = step
            return True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if self.train_log is not None:
                with open(self.train_log, "a") as f:
                    f.write(json.dumps({"stage": self.stage, "step": state.global_step, **logs}, default=str) + "\n")
            line = compact(logs)
            if "train_runtime" in logs and state.global_step < state.max_steps:
                line += ", early-stopped"
            if "train_runtime" in logs and getattr(state, "best_metric", None) is not None:  # early stopping's best
                line += (
                    f", best {(args.metric_for_best_model or 'eval_loss').replace('_', ' ')} {state.best_metric:.4g}"
                )
            if line and self.shows(logs, state.global_step, state.max_steps):
                text = f"  {self.stage} step {state.global_step}/{state.max_steps}: {line}"
                (self.training_bar.write if self.training_bar is not None else print)(text)

    return StageProgress()


def quiet_progress(trainer, stage: str, train_log: Path | None):
    """Replace ``trainer``'s progress callback (and its dict printer) with ``stage_progress``'s."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cls)
    trainer.add_callback(stage_progress(stage, train_log))
    return trainer


class Notices(logging.Filter):
    """Keeps warnings of ``NOISY`` loggers (below ERROR) off a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = any(record.name == n or record.name.startswith(n + ".") for n in NOISY)
        return not (noisy and record.levelno < logging.ERROR)


def quiet_console():
    """Route warnings and the libraries' loggers through the root logger (the job's log file keeps them) and keep
    their notices off the console. Call once logging is configured (Hydra's job start)."""
    for handler in console_handlers():  # first: importing the libraries below may already warn
        handler.addFilter(Notices())
    route_library_notices()
    if not _cuda():  # DeepSpeed announces its CPU fallback on import; say which accelerator, and it need not guess
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def console_handlers() -> list[logging.Handler]:
    """The root logger's handlers that write to a terminal stream (a FileHandler is a StreamHandler too)."""
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def route_library_notices():
    """Warnings and the libraries' log records through the root logger (to its handlers: the job's log file), and
    their progress bars off."""
    import datasets
    import transformers

    logging.captureWarnings(True)  # warnings.warn -> logger py.warnings
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.set_verbosity_warning()  # its warnings reach the file; the console filter keeps them off
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    datasets.disable_progress_bars()  # the map / filter bars of every dataset TRL prepares


@contextlib.contextmanager
def stack_notices_off():
    """Inside: warnings about the stack, not the run (transformers' deprecation of names TRL 1.16 calls, PyTorch's
    pin_memory notice without an accelerator) are not shown; where no log file keeps them: ``trl_irl.run``, and the
    CLI's checks before Hydra starts."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
        warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator", category=UserWarning)
        yield


@contextlib.contextmanager
def notices_kept_for_the_run():
    """``trl_irl.run``'s console, as the CLI's: the stack's notices and the libraries' progress bars stay off the
    caller's console; they are held in memory until ``keep_in(path)`` names the run's log file (a refused run writes
    nothing), then written there. Everything it changes (root handlers, warning capture, transformers' and datasets'
    logging and bars) is restored on exit."""
    import logging.handlers

    import datasets
    import transformers

    tf_logging = transformers.utils.logging
    tf_root = tf_logging._get_library_root_logger()
    saved = {
        "captured": logging._warnings_showwarning is not None,  # logging.captureWarnings(True) is on
        "tf_propagate": tf_root.propagate,
        "tf_handler": tf_logging._default_handler in tf_root.handlers,
        "tf_verbosity": tf_logging.get_verbosity(),
        "tf_bars": tf_logging.is_progress_bar_enabled(),
        "ds_bars": datasets.utils.logging.is_progress_bar_enabled(),
    }
    root = logging.getLogger()
    consoles = console_handlers()
    added_console = None
    if not consoles:  # as the CLI's console handler: the run's own warnings still show
        added_console = logging.StreamHandler()
        added_console.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        consoles = [added_console]
        root.addHandler(added_console)
    notices = Notices()
    for handler in consoles:
        handler.addFilter(notices)
    held = logging.handlers.BufferingHandler(capacity=10**9)
    root.addHandler(held)
    files: list[logging.Handler] = []

    def keep_in(path: str | os.PathLike):
        file = logging.FileHandler(path, mode="a", encoding="utf-8")
        file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        for record in held.buffer:
            file.handle(record)
        root.removeHandler(held)
        root.addHandler(file)
        files.append(file)

    route_library_notices()
    try:
        yield keep_in
    finally:
        for handler in [held, *files, *([added_console] if added_console else [])]:
            root.removeHandler(handler)
            handler.close()
        for handler in consoles:
            handler.removeFilter(notices)
        logging.captureWarnings(saved["captured"])
        tf_root.propagate = saved["tf_propagate"]
        if saved["tf_handler"]:
            tf_logging.enable_default_handler()
        tf_logging.set_verbosity(saved["tf_verbosity"])
        if saved["tf_bars"]:
            tf_logging.enable_progress_bar()
        if saved["ds_bars"]:
            datasets.enable_progress_bars()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def stage_header(stage: str):
    print(f"\n== {stage} ==", flush=True)
