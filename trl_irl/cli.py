"""The front doors, ``trl-irl`` and ``trl_irl.run``: compose the Hydra config, check the whole command before anything
is written (``entry`` -> ``checked_command``: every job of a multirun, a resume's recorded overrides), run its job
(``trl_irl/jobs.py``), print the result's path last. A refusal is one line, in the same words from either door."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parent / "conf"  # inside the package: a non-editable install finds it
DATA_DIR = Path(__file__).resolve().parent / "data"
# ${trl_irl_data:word_reversal.jsonl}: a data file shipped with the package (recipes use it; so may you)
OmegaConf.register_new_resolver("trl_irl_data", lambda name: str(DATA_DIR / name), replace=True)
# ${trl_irl_times:${.r},2}: a value that follows another (LoRA's alpha = 2 r, so a rank sweep keeps the scale)
OmegaConf.register_new_resolver("trl_irl_times", lambda x, k: x * k, replace=True)


def config_dict(cfg: DictConfig) -> dict:
    """Plain dicts (TRL configs must stay JSON-serialisable); a value left at ``???`` (e.g. ``model.path`` of the
    qlora recipes) fails here, with its key named, before anything runs."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or str(error)
        raise ValueError(f"{key} has no value: give it on the command line, e.g. {key}=...") from None


def load_plugins(container: dict):
    """Import each module ``plugins`` names (``plugins=[my_objectives]``), before the config is checked, so that
    what it registers (``register_objective``, ``register_algorithm``, ``register_task``) is known by name. Modules
    are looked up on the Python path, then in the current folder."""
    import importlib
    import sys

    plugins = container.get("plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: a plugin never shadows an installed package
    for name in plugins:
        try:
            importlib.import_module(str(name))
        except ModuleNotFoundError as error:
            if error.name is None or not (str(name) == error.name or str(name).startswith(error.name + ".")):
                raise  # the plugin was found, and something it imports is missing: Python's own message says what
            raise ValueError(
                f"plugins: no module named {name!r} on the Python path or in {os.getcwd()}: run from "
                "the folder that holds it, add its folder to PYTHONPATH, or install it"
            ) from None


GROUPS = ("task", "model", "quant", "peft", "reward", "algo", "credit", "logger")


@functools.lru_cache(maxsize=32)
def _schema(overrides: tuple[str, ...]) -> dict:
    """The config of these group choices, unresolved (the packaged configs do not change while a process runs, and a
    sweep's check composes it once per choice of groups, not per run)."""
    from hydra import compose

    return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=False)


def check_keys_known(container: dict, choices: dict, overrides: list[str]):
    """The config has no key its schema lacks: for the pipeline job the schema is the config of the same group
    choices without recipe or overrides (a misspelt ``+sead=3`` or a recipe's ``taks:`` is refused, not ignored);
    for a study's job (prompt_oirl, compounding_error) it is the study's recipe without overrides
    (``+data.datset=svamp`` is refused). Call it where Hydra is initialised (``compose`` needs it)."""
    from .validation import JOB_OPEN_SECTIONS, OPEN_SECTIONS, check_unknown_keys, given_where

    job, recipe = container.get("job"), choices.get("recipe")
    if job == "pipeline":
        base_recipe, open_sections = "default", OPEN_SECTIONS
        if container["task"].get("name") == choices.get("task"):  # the group's own task: its file lists every key
            open_sections = tuple(
                s for s in OPEN_SECTIONS if s != "task"
            )  # (recipe=toy's task.horizon with task=dataset)
    elif job in JOB_OPEN_SECTIONS:
        base_recipe, open_sections = recipe, JOB_OPEN_SECTIONS[job]
    else:
        return  # an unknown job is refused by name where it is dispatched
    schema = _schema(tuple(f"{g}={choices[g]}" for g in GROUPS if choices.get(g)) + (f"recipe={base_recipe}",))

    def source(path: str) -> str:
        written = [o for o in overrides if (o.lstrip("+~").split("=")[0] + ".").startswith(path + ".")]
        return f" ({given_where()}: {written[0]})" if written else f" (from recipe={recipe} or a config file)"

    if "task" not in open_sections:
        check_task_keys(container["task"], choices["task"], schema["task"], source, recipe)
    check_unknown_keys(container, schema, source, open_sections)


def check_task_keys(task: dict, chosen: str, known: dict, source, recipe: str):
    """A ``task.`` key that another task option has (``recipe=toy task=dataset``: the toy recipe sets the automaton's
    ``task.horizon``) is refused as that, with the fix, rather than as a misspelling of one of ``chosen``'s keys."""
    import yaml

    for key in task:
        if key in known:
            continue
        owners = sorted(
            p.stem
            for p in (CONF_DIR / "task").glob("*.yaml")
            if p.stem != chosen and key in (yaml.safe_load(p.read_text()) or {})
        )
        if not owners:
            continue  # a misspelling: check_unknown_keys says which key was meant
        where = source(f"task.{key}")
        fix = (
            (
                f"recipe={recipe} is written for task={owners[0]}: leave it out with task={chosen} (for a first, quick "
                "run on your file: algo.max_steps=20)"
            )
            if "from recipe=" in where
            else f"remove task.{key}, or choose task={owners[0]}"
        )
        raise ValueError(f"task.{key}{where} is a key of task={owners[0]}, not of task={chosen}: {fix}")


def compose(*overrides: str, output_dir: str | os.PathLike | None = None) -> dict:
    """The job's config as the CLI composes it from ``overrides``, its plugins imported and its keys checked (a
    misspelt key is refused here, as is anything Hydra cannot compose); nothing runs, nothing is written.
    ``output_dir``: the run's folder (None: the folder the CLI would run in, ``hydra.run.dir`` resolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .validation import refusing

    check_override_keys(list(overrides))
    folder = [] if output_dir is None else [f"output_dir={Path(output_dir).resolve()}"]
    with refusing(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose("config", overrides=[*overrides, *folder], return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            raise ValueError(hydra_message(error, list(overrides))) from None
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            if output_dir is None:
                cfg.output_dir = str(Path(cfg.hydra.run.dir).resolve())
            del cfg["hydra"]
        container = config_dict(cfg)
        load_plugins(container)
        check_keys_known(container, choices, list(overrides))
    return container


def hydra_message(error: Exception, overrides: list[str]) -> str:
    """Hydra's error as one line: an override its parser cannot read, with the quoting that fixes it; a config
    group option that is not there, with the options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    if isinstance(error, OverrideParseException):
        parser = OverridesParser.create()
        for override in overrides:
            try:
                parser.parse_override(override)
            except HydraException as bad:
                key, _, value = override.partition("=")
                quoted = f"{key}=" + "'" + value.replace("'", "\\'") + "'"
                return (
                    f"{override}: Hydra's override parser cannot read this value ({str(bad).splitlines()[0]}): "
                    f'( ) [ ] {{ }} , = and spaces are its syntax, so quote the value: "{quoted}" '
                    "(https://hydra.cc/docs/advanced/override_grammar/basic)"
                )
    text = str(error).replace("In 'config': ", "").split("Config search path:")[0]
    head, _, options = text.partition("Available options in")
    if options:
        group, _, names = options.partition(":")
        return f"{' '.join(head.split())} (the options in {group.strip()}: {', '.join(names.split())})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def check(*overrides: str, output_dir: str | os.PathLike | None = None) -> dict:
    """Every check a run of ``overrides`` makes before it writes anything or loads a model (keys, values, files, the
    data and the verifier on it, combinations, the trainer configs, the run folder), without running it; returns its
    config. A study's job checks its own settings and files."""
    from .jobs import job

    container = compose(*overrides, output_dir=output_dir)
    job(container["job"]).check(container)
    return container


class Metrics(dict):
    """What ``trl_irl.run`` returns: ``metrics.json`` as a dict, and ``path``, where it is (also its ``os.fspath``)."""

    def __init__(self, path: str | os.PathLike):
        import json

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
    from .console import stack_notices_off
    from .jobs import job
    from .run_folder import resumable, resume_overrides, wants_resume, write_record
    from .validation import Refused, door

    with door("python"), stack_notices_off():
        overrides = list(overrides) + (["resume=true"] if resume else [])
        if verifier is not None:
            from .tasks.verifiers import register_verifier

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
        with resumable(out):
            path = runner.run(checked)
    return None if path is None else Metrics(path)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """A job Hydra starts (one run, or each job of a multirun), its command already checked by ``entry``."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .console import quiet_console
    from .jobs import job
    from .run_folder import Terminated, resumable
    from .validation import Refused, refusing

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


def check_override_keys(args: list[str]):
    """A key set without ``+`` must be in the config already; Hydra refuses one that is not with "Key 'max_step' is
    not in struct" and the advice to add it with ``+``, which for a misspelt key is the wrong fix. Say which key was
    meant instead, before Hydra starts. (Hydra itself checks what this leaves: a multirun over groups or recipes.)"""
    from hydra import initialize_config_dir

    from .validation import refusing

    plain = {a.split("=", 1)[0]: a for a in args if "=" in a and not a.startswith(("-", "+", "~"))}
    choices = tuple(a for key, a in plain.items() if key in (*GROUPS, "recipe"))
    written = {
        key: a
        for key, a in plain.items()  # not a group choice (algo=ppo, hydra/launcher=...), not Hydra's
        if key not in (*GROUPS, "recipe") and "/" not in key and key.split(".")[0] != "hydra"
    }
    if not written or any("," in c for c in choices):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            schema = _schema(choices)
    except Exception:
        return
    with refusing():
        check_written_keys(written, schema, choices)


def check_written_keys(written: dict[str, str], schema: dict, choices: tuple[str, ...]):
    """Each ``{key: override}`` written without ``+`` names a key of ``schema`` (the config of ``choices``)."""
    from .validation import OPEN_SECTIONS, check_unknown_keys, given_where

    for key, arg in written.items():

        def source(path, arg=arg):  # where the key was given, for the error message
            return f" ({given_where()}: {arg})"

        if key.startswith("task.") and key.count(".") == 1:  # another task option's key (task.horizon, task=dataset)
            check_task_keys(
                {key[5:]: None},
                schema["task"]["name"],
                schema["task"],
                source,
                next((c.split("=", 1)[1] for c in choices if c.startswith("recipe=")), None),
            )
        nested: dict = {}
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = None
        try:
            check_unknown_keys(nested, schema, source, open_sections=())
        except ValueError as error:
            section = key.rpartition(".")[0]
            field = (
                f" A field of the {section} section's config class that its file does not list is set with a +: +{arg}"
                if section in OPEN_SECTIONS
                else ""
            )
            raise ValueError(f"{error}.{field}") from None


def refuse(error: Exception, job_dir: Path | None = None, multirun: bool = False):
    """A bad input's message as one line on the console (``HYDRA_FULL_ERROR=1``: its traceback too), exit status 2.
    Refused by ``entry`` before Hydra starts, nothing is written. Inside a job Hydra started (what changed since the
    check: a run took the folder), the traceback also goes to the job's log file, and a multirun's job leaves
    ``refused.txt`` for the summary (``trl_irl/multirun.py``), which lists it and exits with status 2 after the other
    jobs have run."""
    import logging
    import sys
    import traceback

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
    from .checkpoints import atomic_write_text
    from .multirun import REFUSED

    atomic_write_text(job_dir / REFUSED, str(error))


def checked_command(argv: list[str]) -> list[str]:
    """The front door, before Hydra starts: every job the command would start is checked as a run checks itself
    (a multirun's each, before the first trains), so that a refusal leaves no trace (Hydra writes a job's record into
    its folder as the job starts). A resume takes the overrides its folder was started with (those given replace
    theirs). Returns the arguments for Hydra: the run's folder pinned to the one checked, a resume's recorded
    overrides in front of the given ones. Hydra's own commands (``--cfg``, ``--info``, ...) pass as they are."""
    import tempfile

    from hydra._internal.utils import get_args_parser

    from .run_folder import key_of, resume_overrides, wants_resume
    from .validation import Refused, override_value

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
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

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
        from hydra.core.override_parser.overrides_parser import OverridesParser

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
    import textwrap

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
    import logging
    import sys

    from .console import quiet_console, stack_notices_off

    if any(arg in ("--help", "-h") for arg in sys.argv[1:]) and sys.argv[1:2] != ["sweep"]:
        print(help_text())
        return
    logging.basicConfig(format="%(name)s: %(message)s")  # until Hydra configures logging: a console handler that
    quiet_console()  # keeps the stack's notices off, as in a job
    try:
        with stack_notices_off():
            if sys.argv[1:2] == ["sweep"]:  # a bare word: every Hydra override has an "="
                from .sweeps import main as sweep

                sys.exit(sweep(sys.argv[2:]))
            sys.argv[1:] = checked_command(sys.argv[1:])
    except ValueError as error:  # Refused, or the sweep's own
        refuse(error)
    main()


if __name__ == "__main__":
    entry()
