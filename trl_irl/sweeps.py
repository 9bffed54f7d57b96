"""wandb sweeps of ``trl-irl`` runs: ``trl-irl sweep NAME key=value ...``.

A sweep config (``trl_irl/conf/recipe/sweeps/*.yaml``, or a YAML of yours) makes ``wandb agent`` start
``trl-irl key=value ...`` once per run: every parameter is a flat Hydra override. ``trl-irl sweep`` fills in the
values the config leaves to you (``model.path: {value: ???}``) as fixed sweep parameters, checks every run the
sweep would start as a run checks itself before loading a model (so a wrong path fails here, not in run 7 on the
GPU), and writes the filled config for ``wandb sweep``. A run under ``wandb agent`` logs online
(``tracking.wandb_mode``) and reports ``policy/<metric>``, the trained arm's, whatever its algorithm.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import yaml

from .checkpoints import atomic_write_text
from .config import CONF_DIR, check

SWEEP_DIR = CONF_DIR / "recipe" / "sweeps"
MISSING = "???"


def available() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def load(name: str) -> dict:
    """A shipped sweep by name (``qlora_lora_rank``), or a sweep YAML of yours by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEP_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"sweep {name!r}: no such sweep; choose one of {available()} or give a sweep YAML's path")
    spec = yaml.safe_load(path.read_text())
    if spec.get("program") != "trl-irl" or not isinstance(spec.get("parameters"), dict):
        raise ValueError(f"sweep {name!r}: a trl-irl sweep has `program: trl-irl` and `parameters:` (see {SWEEP_DIR})")
    return spec


def with_values(spec: dict, values: list[str]) -> dict:
    """``spec`` with each ``key=value`` a fixed parameter (``{value: ...}``), replacing what the config had; a path
    that exists here is made absolute (``wandb agent`` may start the runs from another folder)."""
    spec = {**spec, "parameters": dict(spec["parameters"])}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: give fixed sweep values as key=value, e.g. model.path=/models/my-model")
        value = yaml.safe_load(value) if value else value
        if isinstance(value, str) and Path(value).expanduser().exists():  # the agent may run from another folder
            value = str(Path(value).expanduser().resolve())
        spec["parameters"][key] = {"value": value}
    return spec


def runs(spec: dict) -> list[list[str]]:
    """The overrides of every run the sweep can start: the product of each parameter's ``values`` (a grid's
    runs, exactly), a distribution at its ``min`` and ``max`` (a random or Bayesian search's corners)."""
    keys, choices = [], []
    for key, param in spec["parameters"].items():
        if "value" in param:
            options = [param["value"]]
        elif "values" in param:
            options = list(param["values"])
        elif "min" in param and "max" in param:
            options = [param["min"], param["max"]]
        else:
            raise ValueError(f"sweep parameter {key}: give value, values, or min and max")
        keys.append(key)
        choices.append(options)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*choices)]


def check_runs(spec: dict, name: str = "NAME") -> int:
    """Every run of ``spec`` passes the checks a run makes before it loads a model; returns how many were
    checked. A value left at ``???`` is named with the line that fills it in."""
    missing = [k for k, p in spec["parameters"].items() if p.get("value") == MISSING]
    if missing:
        raise ValueError(
            f"sweep parameters {missing} have no value: give them, e.g. trl-irl sweep {name} "
            + " ".join(f"{k}=..." for k in missing)
        )
    all_runs = runs(spec)
    with tempfile.TemporaryDirectory() as folder:
        for overrides in all_runs:
            try:
                check(*overrides, output_dir=folder)
            except (ValueError, FileNotFoundError) as error:
                raise ValueError(f"the sweep's run `trl-irl {' '.join(overrides)}` would fail: {error}") from None
    return len(all_runs)


def main(argv: list[str]) -> int:
    """``trl-irl sweep`` (list the sweeps), ``trl-irl sweep NAME [key=value ...] [--out FILE]``."""
    if not argv or argv[0].startswith("-"):
        print("usage: trl-irl sweep NAME [key=value ...] [--out FILE]\n\nsweeps (trl_irl/conf/recipe/sweeps/):")
        for name in available():
            first = (SWEEP_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
            print(f"  {name:<16} {first.removeprefix('wandb sweep: ')}")
        return 0
    name, rest = argv[0], argv[1:]
    out = None
    if "--out" in rest:
        i = rest.index("--out")
        if i + 1 >= len(rest):
            raise ValueError("--out needs a file name")
        out, rest = Path(rest[i + 1]), rest[:i] + rest[i + 2 :]
    spec = with_values(load(name), rest)
    count = check_runs(spec, name)
    out = out or Path(f"{Path(name).stem}.sweep.yaml")

    atomic_write_text(out, yaml.safe_dump(spec, sort_keys=False))
    print(f"checked the sweep's {count} run(s): each passes the checks a run makes before it loads a model")
    print(f"wrote {out.resolve()}\nnext: wandb sweep {out} && wandb agent <the sweep id it prints>")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
