"""The ``trl-irl`` command: compose the Hydra config, run its job (``trl_irl/jobs.py``), print the result's path last."""

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
            raise ValueError(f"plugins: no module named {name!r} on the Python path or in {os.getcwd()}: run from "
                             "the folder that holds it, add its folder to PYTHONPATH, or install it") from None


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
    from .validation import JOB_OPEN_SECTIONS, OPEN_SECTIONS, check_unknown_keys

    job, recipe = container.get("job"), choices.get("recipe")
    if job == "pipeline":
        base_recipe, open_sections = "default", OPEN_SECTIONS
        if container["task"].get("name") == choices.get("task"):  # the group's own task: its file lists every key
            open_sections = tuple(s for s in OPEN_SECTIONS if s != "task")  # (recipe=toy's task.horizon with task=dataset)
    elif job in JOB_OPEN_SECTIONS:
        base_recipe, open_sections = recipe, JOB_OPEN_SECTIONS[job]
    else:
        return  # an unknown job is refused by name where it is dispatched
    schema = _schema(tuple(f"{g}={choices[g]}" for g in GROUPS if choices.get(g)) + (f"recipe={base_recipe}",))

    def source(path: str) -> str:
        written = [o for o in overrides if (o.lstrip("+~").split("=")[0] + ".").startswith(path + ".")]
        return f" (on the command line: {written[0]})" if written else f" (from recipe={recipe} or a config file)"

    check_unknown_keys(container, schema, source, open_sections)


def compose(*overrides: str, output_dir: str | os.PathLike) -> dict:
    """The job's config as the CLI composes it from ``overrides``, its plugins imported and its keys checked (a
    misspelt key is refused here); nothing runs."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*overrides, f"output_dir={Path(output_dir).resolve()}"],
                            return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        container = config_dict(cfg)
        load_plugins(container)
        check_keys_known(container, choices, list(overrides))
    return container


def check(*overrides: str, output_dir: str | os.PathLike = "outputs/check") -> dict:
    """Every check a run of ``overrides`` makes before it loads a model (keys, values, files, combinations, the
    trainer configs), without running it; returns its config. A study's job checks its keys only."""
    container = compose(*overrides, output_dir=output_dir)
    if container["job"] == "pipeline":
        from .pipeline import Pipeline

        Pipeline(container)  # its constructor is the pipeline's whole check; it writes nothing
    return container


def run(*overrides: str, output_dir: str | os.PathLike) -> Path:
    """The ``trl-irl`` job from Python: the same config and overrides (``"task=dataset"``, ``"task.path=my.jsonl"``,
    ...), run in ``output_dir``; returns the path of ``metrics.json``. Multirun and Hydra's own flags are the CLI's."""
    from .pipeline import Pipeline

    import warnings

    container = compose(*overrides, output_dir=output_dir)
    if container["job"] != "pipeline":
        raise ValueError(f"trl_irl.run runs the pipeline job; job={container['job']!r} runs from the CLI: "
                         f"trl-irl {' '.join(overrides)}")
    with warnings.catch_warnings():  # notices about the stack, not the run (the CLI keeps them in its log file):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")  # names TRL 1.16 calls
        warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator", category=UserWarning)
        return Pipeline(container).run()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .console import quiet_console
    from .jobs import job_runner
    from .validation import Refused, refusing

    quiet_console()
    runtime = HydraConfig.get()
    try:
        with refusing():
            container = config_dict(cfg)
            load_plugins(container)
            check_keys_known(container, dict(runtime.runtime.choices), list(runtime.overrides.task))
        path = job_runner(container["job"])(container)
    except Refused as error:
        refuse(error, Path(runtime.runtime.output_dir), multirun=runtime.mode == RunMode.MULTIRUN)
        return
    if path is not None:  # under `accelerate launch`: one process reports
        print(path, flush=True)  # the output contract: the last line is the absolute path of the job's result


def check_override_keys(args: list[str]):
    """A key set without ``+`` must be in the config already; Hydra refuses one that is not with "Key 'max_step' is
    not in struct" and the advice to add it with ``+``, which for a misspelt key is the wrong fix. Say which key was
    meant instead, before Hydra starts. (Hydra itself checks what this leaves: a multirun over groups or recipes.)"""
    from hydra import initialize_config_dir

    from .validation import OPEN_SECTIONS, Refused, check_unknown_keys

    plain = {a.split("=", 1)[0]: a for a in args if "=" in a and not a.startswith(("-", "+", "~"))}
    choices = tuple(a for key, a in plain.items() if key in (*GROUPS, "recipe"))
    written = {key: a for key, a in plain.items()  # not a group choice (algo=ppo, hydra/launcher=...), not Hydra's
               if key not in (*GROUPS, "recipe") and "/" not in key and key.split(".")[0] != "hydra"}
    if not written or any("," in c for c in choices):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            schema = _schema(choices)
    except Exception:  # noqa: BLE001 - an unknown recipe or group option: Hydra's own message names the choices
        return
    for key, arg in written.items():
        nested: dict = {}
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = None
        try:
            check_unknown_keys(nested, schema, lambda path: f" (on the command line: {arg})", open_sections=())
        except ValueError as error:
            section = key.rpartition(".")[0]
            field = f" A field of the {section} section's config class that its file does not list is set with a +: " \
                    f"+{arg}" if section in OPEN_SECTIONS else ""
            raise Refused(f"{error}.{field}") from None


def refuse(error: Exception, job_dir: Path | None = None, multirun: bool = False):
    """A bad input's message as one line on the console; its traceback goes to the job's log file (Hydra's) for
    whoever debugs the check itself. A run exits with status 2; a multirun's job leaves ``refused.txt`` for the
    summary (``trl_irl/multirun.py``), which lists it and exits with status 2 after the other jobs have run."""
    import logging
    import sys

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


def recipes() -> dict[str, str]:
    """{recipe name: its description} (the first comment line after the package line), without the parts and the
    sweep configs that live beside them (a sweep is run by ``wandb sweep``, a part is included by a recipe)."""
    found = {}
    for path in sorted((CONF_DIR / "recipe").rglob("*.yaml")):
        if {"parts", "sweeps"} & set(path.relative_to(CONF_DIR / "recipe").parts):
            continue
        comments = [line.lstrip("# ").strip() for line in path.read_text().splitlines()
                    if line.startswith("#") and "@package" not in line]
        found[str(path.relative_to(CONF_DIR / "recipe").with_suffix(""))] = comments[0] if comments else ""
    return found


def help_text() -> str:
    """What ``trl-irl --help`` prints: the app, its recipes (not their parts), the groups, examples."""
    import textwrap

    groups = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in sorted(CONF_DIR.iterdir())
              if p.is_dir() and p.name not in ("recipe", "hydra")}
    width = max(map(len, recipes()))
    lines = ["trl-irl: online inverse RL for LLMs on top of TRL. BC on your demonstrations, then RL on a reward that",
             "keeps learning from demonstrations vs the policy's own samples; every arm evaluated on held-out rows.",
             "", "usage: trl-irl [recipe=NAME] [group=option ...] [key=value ...]   (Hydra overrides; -m: multirun)", "",
             "recipes:"]
    lines += [f"  {name:<{width}}  {textwrap.shorten(text, 96, placeholder=' ...')}" for name, text in recipes().items()]
    lines += ["", "groups (group=option):"] + [f"  {g:<8} {', '.join(options)}" for g, options in groups.items()]
    lines += ["", "examples:", "  trl-irl                                              # the default run (1-3 min on CPU)",
              "  trl-irl task=dataset task.path=my.jsonl task.verifier=exact algo=ppo",
              "  trl-irl -m algo=grpo,ppo seed=0,1,2                  # a multirun",
              "  trl-irl sweep qlora_lora_rank model.path=/models/m task.path=my.jsonl   # a wandb sweep, checked",
              "", "The last line of a run is the path of its result (metrics.json). Hydra's own help: --hydra-help"]
    return "\n".join(lines)


def entry():
    """The console script: our help for ``--help`` / ``-h``, else Hydra's job."""
    import sys

    if sys.argv[1:2] == ["sweep"]:  # a bare word: every Hydra override has an "="
        from .console import quiet_console
        from .sweeps import main as sweep

        import logging

        logging.basicConfig(format="%(name)s: %(message)s")  # a console handler the notices filter applies to
        quiet_console()
        try:
            sys.exit(sweep(sys.argv[2:]))
        except ValueError as error:
            print(f"trl-irl sweep: {error}", file=sys.stderr)
            sys.exit(2)
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(help_text())
        return
    from .validation import Refused

    try:
        check_override_keys(sys.argv[1:])
    except Refused as error:
        refuse(error)
    main()


if __name__ == "__main__":
    entry()
