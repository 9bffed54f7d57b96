"""After a multirun (``trl-irl -m ...``): one table over its jobs and ``multirun_summary.json``. A Hydra callback
(``hydra.callbacks`` in conf/config.yaml), instantiated at Hydra's start: it imports nothing heavy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from .results import finish
from .run_folder import key_of
from .statistics import over_seeds

REFUSED = "refused.txt"  # in a multirun's job folder: its config was refused (trl_irl.cli.refuse), and why


def multirun_rows(sweep_dir: Path) -> list[dict]:
    """One row per finished job of a multirun: its overrides, and per arm the headline metric (success rate, else
    the first number) and the gap closed; jobs without a result are listed as missing."""
    rows = []
    for job in sorted(
        (p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = (
            " ".join(line.lstrip("- ").strip() for line in overrides_file.read_text().splitlines() if line.strip())
            if overrides_file.exists()
            else ""
        )
        row = {"job": int(job.name), "overrides": overrides}
        result = next(
            (job / name for name in ("metrics.json", "compounding_error.json") if (job / name).exists()), None
        )
        if (job / REFUSED).exists():  # bad input: nothing ran
            rows.append({**row, "refused": (job / REFUSED).read_text()})
            continue
        if result is None:
            rows.append({**row, "missing": True})
            continue
        metrics = json.loads(result.read_text())
        for arm, values in (metrics.get("arms") or {}).items():
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            key = "success_rate" if "success_rate" in numbers else next(iter(numbers), None)
            if key is not None:
                row[f"{arm}/{key}"] = numbers[key]
        for arm, gap in (metrics.get("gap_closed") or {}).items():
            row[f"{arm}/gap_closed"] = gap
        rows.append({**row, "result": str(result)})
    return rows


def seed_groups(rows: list[dict]) -> list[dict]:
    """The finished jobs grouped by their overrides other than ``seed=``: per group its seeds and, for every metric
    of the rows, the mean, standard deviation and 95% t interval over the seeds (``statistics.over_seeds``)."""

    groups: dict[str, list[dict]] = {}
    for row in rows:
        if "result" in row:
            rest = " ".join(o for o in row["overrides"].split() if key_of(o) != "seed")
            groups.setdefault(rest, []).append(row)
    out = []
    for overrides, members in groups.items():
        seeds = [
            next((o.split("=", 1)[1] for o in m["overrides"].split() if key_of(o) == "seed"), "0") for m in members
        ]
        metrics = dict.fromkeys(k for m in members for k in m if "/" in k)
        out.append(
            {
                "overrides": overrides,
                "seeds": seeds,
                "jobs": [m["job"] for m in members],
                **{
                    k: within_rate_bounds(k, over_seeds([m[k] for m in members if isinstance(m.get(k), (int, float))]))
                    for k in metrics
                    if any(isinstance(m.get(k), (int, float)) for m in members)
                },
            }
        )
    return out


def within_rate_bounds(key: str, stats: dict) -> dict:
    """A success rate's t interval cut to [0, 1], where a rate lies (a few seeds give a t interval wider than that);
    other metrics (gap closed, a loss) as they are."""
    if key.endswith("/success_rate") and stats.get("ci95"):
        low, high = stats["ci95"]
        stats = {**stats, "ci95": [max(low, 0.0), min(high, 1.0)]}
    return stats


def _over_seeds_cell(stats: dict | None) -> str:
    """``mean +- std [low, high]`` over seeds (``mean (1 seed)`` for one)."""
    if not stats:
        return ""
    if stats["std"] is None:
        return f"{stats['mean']:.3f} (1 seed)"
    return f"{stats['mean']:.3f} +- {stats['std']:.3f} [{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]"


class MultirunSummary(Callback):
    """After a multirun, one table over its jobs on the console and, where jobs differ only in their seed, one over
    the seeds (mean, std and the 95% t interval per arm); both in ``multirun_summary.json`` in the sweep folder,
    whose path is printed last."""

    def on_multirun_end(self, config, **kwargs):
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        sweep_dir = Path(config.hydra.sweep.dir).resolve()  # the path printed last is absolute, as a run's is
        if not sweep_dir.exists():
            return
        rows = multirun_rows(sweep_dir)
        groups = seed_groups(rows)
        columns = list(
            dict.fromkeys(k for r in rows for k in r if k not in ("job", "overrides", "result", "missing", "refused"))
        )

        def report(result, path):
            console = Console(width=None if sys.stdout.isatty() else 100_000)  # piped: every column whole
            table = Table(title=f"multirun: {len(rows)} jobs")
            for name in ["job", "overrides", *columns]:
                table.add_column(name, justify="left" if name == "overrides" else "right", no_wrap=True)
            for r in rows:
                cells = [
                    f"{r[c]:.3f}" if isinstance(r.get(c), float) else "-" if r.get(c) is None else str(r[c])
                    for c in columns
                ]
                note = " (refused: see above)" if r.get("refused") else " (no result)" if r.get("missing") else ""
                table.add_row(str(r["job"]), escape(r["overrides"]) + note, *cells)
            console.print(table)
            if any(len(g["seeds"]) > 1 for g in groups):
                over = Table(title="over seeds: mean +- std [95% t interval; success rates' within [0, 1]]")
                for name in ["overrides", "seeds", *columns]:
                    over.add_column(name, justify="left" if name == "overrides" else "right", no_wrap=True)
                for g in groups:
                    over.add_row(
                        escape(g["overrides"]) or "-",
                        ",".join(g["seeds"]),
                        *[_over_seeds_cell(g.get(c)) for c in columns],
                    )
                console.print(over)

        print(
            finish(
                {"sweep_dir": str(sweep_dir), "jobs": rows, "over_seeds": groups},
                sweep_dir / "multirun_summary.json",
                report,
            ),
            flush=True,
        )
        if any(r.get("refused") for r in rows):
            sys.exit(2)  # after the other jobs and the summary: a script sees that not every job ran
