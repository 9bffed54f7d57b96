"""The run's config: composed from the Hydra groups in ``conf/`` and the overrides, its keys checked against what
the chosen groups define (``compose``), and the whole run checked before anything is written (``check``). Both front
doors (``cli.py``) and the sweep's check of every run (``sweeps.py``) use these."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .jobs import job
from .validation import JOB_OPEN_SECTIONS, OPEN_SECTIONS, check_unknown_keys, given_where, nest, refusing

CONF_DIR = Path(__file__).resolve().parent / "conf"  # inside the package: a non-editable install finds it
DATA_DIR = Path(__file__).resolve().parent / "data"
# ${trl_irl_data:word_reversal.jsonl}: a data file shipped with the package (recipes use it; so may you)
OmegaConf.register_new_resolver("trl_irl_data", lambda name: str(DATA_DIR / name), replace=True)
# ${trl_irl_times:${.r},2}: a value that follows another (LoRA's alpha = 2 r, so a rank sweep keeps the scale)
OmegaConf.register_new_resolver("trl_irl_times", lambda x, k: x * k, replace=True)


def config_dict(cfg: DictConfig) -> dict:
    """Plain dicts (TRL configs must stay JSON-serialisable); a value left at ``???`` (e.g. ``model.path`` of the
    qlora recipes) fails here, with its key named, before anything runs."""

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or str(error)
        raise ValueError(f"{key} has no value: give it on the command line, e.g. {key}=...") from None


def load_plugins(container: dict):
    """Import each module ``plugins`` names (``plugins=[my_objectives]``), before the config is checked, so that
    what it registers (``register_objective``, ``register_algorithm``, ``register_task``) is known by name. Modules
    are looked up on the Python path, then in the current folder."""

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
    return OmegaConf.to_container(hydra_compose("config", overrides=list(overrides)), resolve=False)


def check_keys_known(container: dict, choices: dict, overrides: list[str]):
    """The config has no key its schema lacks: for the pipeline job the schema is the config of the same group
    choices without recipe or overrides (a misspelt ``+sead=3`` or a recipe's ``taks:`` is refused, not ignored);
    for a study's job (prompt_oirl, compounding_error) it is the study's recipe without overrides
    (``+data.datset=svamp`` is refused). Call it where Hydra is initialised (``compose`` needs it)."""

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

    container = compose(*overrides, output_dir=output_dir)
    job(container["job"]).check(container)
    return container


def check_override_keys(args: list[str]):
    """A key set without ``+`` must be in the config already; Hydra refuses one that is not with "Key 'max_step' is
    not in struct" and the advice to add it with ``+``, which for a misspelt key is the wrong fix. Say which key was
    meant instead, before Hydra starts. (Hydra itself checks what this leaves: a multirun over groups or recipes.)"""

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
        try:
            check_unknown_keys(nest({key: None}), schema, source, open_sections=())
        except ValueError as error:
            section, _, last = key.rpartition(".")
            field = (  # a task's options are all in its file: a misspelling, never a field to add with +
                f" If {last} is a field of the {section} section's config class that its file does not list, set it "
                f"with a +: +{arg}"
                if section in OPEN_SECTIONS and section != "task"
                else ""
            )
            raise ValueError(f"{error}.{field}" if field else str(error)) from None
