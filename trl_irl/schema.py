"""One config schema: the trainer configs (dataclasses) are the schema, and where a field is set from in the Hydra
config is said once, on the field.

A section of the Hydra config holds fields of one trainer config as they are: ``algo`` the algorithm's
(``OnlineRewardGRPOConfig`` and its subclasses), ``reward.pretrain`` ``IRLRewardConfig``'s, ``bc.extra`` /
``spin.extra`` TRL's ``SFTConfig`` / ``DPOConfig``'s. A field set from a shared section names its path in its metadata,
``field(..., metadata={"config": "reward.online.learning_rate"})``: ``reward.objective`` feeds every config that has an
``objective``, ``credit.*`` the credit fields, ``reward.online.*`` the online reward model's. From that one statement
the pipeline builds every trainer config (``config_values``), checks each section's keys (``check_section``) and
names the path the user wrote in a config's own errors (``build_config``): no key is renamed by hand.

(Hydra's structured configs cannot hold TRL's configs: OmegaConf refuses their ``Union[dict, str]`` fields.)
"""

from __future__ import annotations

import dataclasses
import re
import typing

from .validation import check_types, lookup


def config_paths(cls) -> dict[str, str]:
    """{field name: Hydra config path} for the fields of ``cls`` set from a shared section."""
    return {f.name: f.metadata["config"] for f in dataclasses.fields(cls) if "config" in f.metadata}


def config_values(cls, cfg: dict) -> dict:
    """The values of ``cls``'s fields that ``cfg`` sets through their config paths."""
    values = {name: lookup(cfg, path, dataclasses.MISSING) for name, path in config_paths(cls).items()}
    return {name: value for name, value in values.items() if value is not dataclasses.MISSING}


def check_fields(cls, keys, where: str):
    """Every key of an open section must be a field of the dataclass ``cls``; the error names the section and the
    fix."""
    unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} under {where}: they are not fields of {cls.__name__}. "
            f"Fix the spelling or remove them (see the {cls.__name__} docs for valid fields)"
        )


def check_section(cfg: dict, section: str, classes):
    """Every key under ``section`` must be the config path of a field of one of ``classes``."""
    classes = list(dict.fromkeys(classes))
    known = {
        path.rpartition(".")[2]
        for cls in classes
        for path in config_paths(cls).values()
        if path.rpartition(".")[0] == section
    }
    keys = lookup(cfg, section)
    unknown = sorted(set(keys if isinstance(keys, dict) else ()) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} under {section}: valid keys are {sorted(known)} (the fields of "
            f"{', '.join(c.__name__ for c in classes)} set from {section}). Fix the spelling or remove them"
        )


def section_paths(section: str, values: dict) -> dict[str, str]:
    """{field: config path} for an open section's keys (``algo.beta``; its ``extra`` dict: ``algo.extra.<key>``)."""
    paths = {k: f"{section}.{k}" for k in values if k not in ("name", "extra")}
    return {**paths, **{k: f"{section}.extra.{k}" for k in values.get("extra", {})}}


def build_config(cls, values: dict, where: str, paths: dict[str, str] | None = None):
    """``cls(**values)`` after ``check_fields`` and ``check_types`` (5.5 or "twenty" for an integer); the config's own
    checks (TRL's, ours) name the config path the user wrote: a field set from a shared section by its path
    (``reward_learning_rate`` as ``reward.online.learning_rate``), one from an open section by the path in ``paths``
    (``section_paths``), else the message says ``where``."""

    check_fields(cls, values, where)
    named = {**(paths or {}), **config_paths(cls)}
    check_types(values, typing.get_type_hints(cls), lambda name: named.get(name, f"{where}: {name}"))
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        message = str(error)
        for name, path in named.items():  # a value's name, not a word of the prose
            message = re.sub(rf"(?<![\w.]){re.escape(name)}(?=\s*(?:=|must\b|is\b))", path, message)
        raise ValueError(message if message != str(error) else f"{where}: {message}") from None
