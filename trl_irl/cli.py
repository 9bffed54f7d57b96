"""The front doors, ``trl-irl`` and ``trl_irl.run``: compose the Hydra config, check the whole command before anything
is written (``entry`` -> ``checked_command``: every job of a multirun, a resume's recorded overrides), run its job
(``trl_irl/jobs.py``), print the result's path last. A refusal is one line, in the same words from either door. The
config's composition and checks are ``config.py``'s."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from .checkpoints import atomic_write_text
from .config import CONF_DIR, check, check_keys_known, compose, config_dict, hydra_message, load_plugins
from .console import notices_kept_for_the_run, quiet_console, stack_notices_off
from .jobs import job
from .multirun import REFUSED
from .run_folder import Terminated, key_of, resumable, resume_overrides, wants_resume, write_record
from .sweeps import main as sweep
from .tasks.verifiers import register_verifier
from .validation import Refused, door, override_value, refusing

__all__ = ["CONF_DIR", "Metrics", "check", "compose", "entry", "main", "run"]


class Metrics(dict):
    """What ``trl_irl.run`` returns: ``metrics.json`` as a dict, and ``path``, where it is (also its ``os.fspath``)."""

    def __init__(self, path: str | os.PathLike):

        self.path = Path(path)
        super().__init__(json.loads(self.path.read_text()))

    def __fspath__(self) -> str:
        return str(self.path)


def run(*overrides: str, output_dir: str | os.PathLike, resume: bool = False, verifier=None) -> Metrics | None:
    """The ``trl-irl`` job from Python: the same config and overrides (``"task=dataset"``, ``"task.path=my.jsonl"``,
    ...), run in ``output_dir``; returns its metrics (``Metrics``: a dict, with ``.path``), None on the other
    processes of ``accelerate launch``. ``resume=True`` (or ``"resume=true"``) continues the run in ``output_dir``
    under the overrides it was started with (those given here replace theirs). ``verifier``: a function
    ``score(prompt, completion, row) -> float`` in [0, 1] as the task's verifier (``tasks.register_verifier``).
    Bad input raises ``Refused`` before anything is written; Ctrl-C says how to resume and raises KeyboardInterrupt.
    Multirun and Hydra's own flags are the CLI's."""

    with door("python"), stack_notices_off(), notices_kept_for_the_run() as keep_notices_in:
        overrides = list(overrides) + (["resume=true"] if resume else [])
        if verifier is not None:
            overrides.append(f"task.verifier={register_verifier(verifier)}")
        if wants_resume(overrides):
            overrides = resume_overrides(Path(output_dir), overrides)
        container = compose(*overrides, output_dir=output_dir)
        if container["job"] != "pipeline":
            raise Refused(
                f"trl_irl.run runs the pipeline job; job={container['job']!r} runs from the CLI: "
                f"trl-irl {' '.join(overrides)}"
            )
        runner = job(container["job"])
        checked = runner.check(container)
        out = Path(container["output_dir"])
        if checked.state.is_main_process:
            write_record(out, overrides, container)  # as Hydra does for a CLI run: what a resume composes again
            keep_notices_in(out / "cli.log")  # the job's log file, named as the CLI's
        with resumable(out):
            path = runner.run(checked)
    return None if path is None else Metrics(path)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """A job Hydra starts (one run, or each job of a multirun), its command already checked by ``entry``."""

    quiet_console()
    runtime = HydraConfig.get()
    try:
        with refusing():
            container = config_dict(cfg)
            load_plugins(container)
            check_keys_known(container, dict(runtime.runtime.choices), list(runtime.overrides.task))
        runner = job(container["job"])
        checked = runner.check(container)
        with resumable(Path(runtime.runtime.output_dir)):
            path = runner.run(checked)
    except Refused as error:  # checked before Hydra started: this is what changed since (a run took the folder)
        refuse(error, Path(runtime.runtime.output_dir), multirun=runtime.mode == RunMode.MULTIRUN)
        return
    except KeyboardInterrupt as interrupt:  # said in one line by resumable; no traceback
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)
    if path is not None:  # under `accelerate launch`: one process reports
        print(path, flush=True)  # the output contract: the last line is the absolute path of the job's result


def refuse(error: Exception, job_dir: Path | None = None, multirun: bool = False):
    """A bad input's message as one line on the console (``HYDRA_FULL_ERROR=1``: its traceback too), exit status 2.
    Refused by ``entry`` before Hydra starts, nothing is written. Inside a job Hydra started (what changed since the
    check: a run took the folder), the traceback also goes to the job's log file, and a multirun's job leaves
    ``refused.txt`` for the summary (``trl_irl/multirun.py``), which lists it and exits with status 2 after the other
    jobs have run."""

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error, file=sys.stderr)
    if job_dir is not None:
        log = logging.getLogger("trl_irl")
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "refused: %s", (error,), sys.exc_info())
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
    print(f"trl-irl: {'job ' + job_dir.name + ': ' if multirun else ''}{error}", file=sys.stderr, flush=True)
    if not multirun:
        sys.exit(2)

    atomic_write_text(job_dir / REFUSED, str(error))


def checked_command(argv: list[str]) -> list[str]:
    """The front door, before Hydra starts: every job the command would start is checked as a run checks itself
    (a multirun's each, before the first trains), so that a refusal leaves no trace (Hydra writes a job's record into
    its folder as the job starts). A resume takes the overrides its folder was started with (those given replace
    theirs). Returns the arguments for Hydra: the run's folder pinned to the one checked, a resume's recorded
    overrides in front of the given ones. Hydra's own commands (``--cfg``, ``--info``, ...) pass as they are."""

    args = get_args_parser().parse_args(argv)
    if any(
        (
            args.cfg,
            args.info,
            args.hydra_help,
            args.help,
            args.shell_completion,
            args.experimental_rerun,
            args.config_path,
            args.config_name,
            args.config_dir,
        )
    ):
        return argv
    flags = list(argv)
    for override in args.overrides:
        flags.remove(override)
    if args.multirun:
        try:
            parsed = OverridesParser.create().parse_overrides(args.overrides)
        except HydraException as error:
            raise Refused(hydra_message(error, args.overrides)) from None
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        refused = []
        with tempfile.TemporaryDirectory() as scratch:  # each job's own folder is made by Hydra as it starts
            for number, overrides in enumerate(jobs):
                try:
                    check(*overrides, output_dir=Path(scratch) / str(number))
                except Refused as error:
                    swept = " ".join(o for o in overrides if o not in args.overrides)
                    refused.append(f"job {number}{' (' + swept + ')' if swept else ''}: {error}")
        if refused:
            raise Refused(
                f"the multirun would start {len(jobs)} jobs and {len(refused)} would be refused, so none "
                "starts. " + " | ".join(refused)
            )
        return argv
    overrides = [o for o in args.overrides if key_of(o) != "hydra.run.dir"]
    folder = [o for o in args.overrides if key_of(o) == "hydra.run.dir"][-1:]
    if wants_resume(overrides):
        if not folder:
            raise Refused(
                "resume=true continues the run in a folder: add hydra.run.dir=<the run's folder> (the folder "
                "holding its metrics.json or its stage folders)"
            )
        path = Path(str(OverridesParser.create().parse_override(folder[0]).value())).expanduser()
        overrides = resume_overrides(path, overrides)
    container = check(*overrides, *folder)  # the folder as Hydra resolves it (outputs/DATE/TIME without one)
    return [*flags, *overrides, f"hydra.run.dir={override_value(container['output_dir'])}"]


def recipes() -> dict[str, str]:
    """{recipe name: its description} (the first comment line after the package line), without the parts and the
    sweep configs that live beside them (a sweep is run by ``wandb sweep``, a part is included by a recipe)."""
    found = {}
    for path in sorted((CONF_DIR / "recipe").rglob("*.yaml")):
        if {"parts", "sweeps"} & set(path.relative_to(CONF_DIR / "recipe").parts):
            continue
        comments = [
            line.lstrip("# ").strip()
            for line in path.read_text().splitlines()
            if line.startswith("#") and "@package" not in line
        ]
        found[str(path.relative_to(CONF_DIR / "recipe").with_suffix(""))] = comments[0] if comments else ""
    return found


def help_text() -> str:
    """What ``trl-irl --help`` prints: the app, its recipes (not their parts), the groups, examples."""

    groups = {
        p.name: sorted(q.stem for q in p.glob("*.yaml"))
        for p in sorted(CONF_DIR.iterdir())
        if p.is_dir() and p.name not in ("recipe", "hydra")
    }
    width = max(map(len, recipes()))
    lines = [
        "trl-irl: online inverse RL for LLMs on top of TRL. BC on your demonstrations, then RL on a reward that",
        "keeps learning from demonstrations vs the policy's own samples; every arm evaluated on held-out rows.",
        "",
        "usage: trl-irl [recipe=NAME] [group=option ...] [key=value ...]   (Hydra overrides; -m: multirun)",
        "",
        "recipes:",
    ]
    lines += [
        f"  {name:<{width}}  {textwrap.shorten(text, 96, placeholder=' ...')}" for name, text in recipes().items()
    ]
    lines += ["", "groups (group=option):"] + [f"  {g:<8} {', '.join(options)}" for g, options in groups.items()]
    lines += [
        "",
        "examples:",
        "  trl-irl                                              # the default run (1-3 min on CPU)",
        "  trl-irl task=dataset task.path=my.jsonl task.verifier=exact algo=ppo",
        "  trl-irl -m algo=grpo,ppo seed=0,1,2                  # a multirun",
        "  trl-irl sweep qlora_lora_rank model.path=/models/m task.path=my.jsonl   # a wandb sweep, checked",
        "",
        "The last line of a run is the path of its result (metrics.json). Hydra's own help: --hydra-help",
    ]
    return "\n".join(lines)


def entry():
    """The console script: our help for ``--help`` / ``-h``, ``trl-irl sweep``, else the command checked
    (``checked_command``), then Hydra's job."""

    if any(arg in ("--help", "-h") for arg in sys.argv[1:]) and sys.argv[1:2] != ["sweep"]:
        print(help_text())
        return
    logging.basicConfig(format="%(name)s: %(message)s")  # until Hydra configures logging: a console handler that
    quiet_console()  # keeps the stack's notices off, as in a job
    try:
        with stack_notices_off():
            if sys.argv[1:2] == ["sweep"]:  # a bare word: every Hydra override has an "="
                sys.exit(sweep(sys.argv[2:]))
            sys.argv[1:] = checked_command(sys.argv[1:])
    except ValueError as error:  # Refused, or the sweep's own
        refuse(error)
    main()


if __name__ == "__main__":
    entry()
