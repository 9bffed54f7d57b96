"""Compounding error of behaviour cloning vs online IRL across horizons, with its report.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compounding_error.py --quick            # < 10 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compounding_error.py                    # full mode (resumable)
    .venv/bin/python benchmarks/compounding_error.py --quick --smoke --out /tmp/c.json --report /tmp/c.md --jobs /tmp/j
    .venv/bin/python benchmarks/compounding_error.py --report-only benchmarks/results/compounding_error_quick.json

Writes ``--out`` (JSON: {"rows": [{"arm", "horizon", "success_rate", "invalid_per_rollout",
"expert_logprob_per_token", ...}], "exponents": {...}, "goals": {...}}) and regenerates the Markdown report with
its PNGs (``--report``, default docs/compounding_error.md, or docs/compounding_error_full.md in full mode). The study
itself is trl_irl/compounding/experiment.py; ``trl-irl recipe=compounding_error`` runs the same thing into a Hydra run
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trl_irl.compounding.experiment import StudyConfig, run_study  # noqa: E402
from trl_irl.compounding.report import write_report  # noqa: E402
from trl_irl.results import finish  # noqa: E402

# --smoke: the quick study's code path at a size that runs in seconds
SMOKE = dict(
    settings=["rare/nonrecoverable/small/small"],
    horizons=[4, 8],
    seeds=1,
    workers=1,
    demos={"small": 30, "large": 60},
    hidden={"realisable": 8, "small": 4},
    eval_rollouts=100,
    rl={"iterations": 2, "dagger_rounds": 1, "dagger_rollouts": 10},
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the goal's two settings, T up to 64, 2 seeds")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a minute's check that the script runs: one setting, one "
        "seed, T of 4 and 8, tiny models (its figures mean nothing)",
    )
    parser.add_argument("--seeds", type=int, help="override the mode's number of seeds")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/compounding_error_<mode>.json)")
    parser.add_argument(
        "--report",
        help="Markdown report path (default docs/compounding_error.md for --quick, "
        "docs/compounding_error_full.md for full mode)",
    )
    parser.add_argument("--report-only", metavar="JSON", help="regenerate the report from a finished run's JSON")
    parser.add_argument(
        "--jobs",
        help="folder of finished (group, seed) jobs: a rerun reuses them, so a stopped study "
        "resumes (default outputs/compounding_error_<mode>_jobs)",
    )
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    if args.report_only:
        result = json.loads(Path(args.report_only).read_text())
        mode = result.get("mode", mode)
        print(write_report(result, report_path(args, mode), command(mode, result["config"]["seeds"])))
        return
    cfg = getattr(StudyConfig, mode)(**({"seeds": args.seeds} if args.seeds else {}), **(SMOKE if args.smoke else {}))
    jobs = Path(args.jobs or ROOT / "outputs" / f"compounding_error_{mode}_jobs")
    result = {**run_study(cfg, jobs_dir=jobs), "mode": mode}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"compounding_error_{mode}.json")
    print(finish(result, out, indent=1))
    print(write_report(result, report_path(args, mode), command(mode, cfg.seeds)))


def report_path(args, mode: str) -> Path:
    return Path(
        args.report or ROOT / "docs" / ("compounding_error.md" if mode == "quick" else "compounding_error_full.md")
    )


def command(mode: str, seeds: int) -> str:
    """The command that reruns this study (the report names it)."""
    default = getattr(StudyConfig, mode)().seeds
    return (
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compounding_error.py"
        + (" --quick" if mode == "quick" else "")
        + (f" --seeds {seeds}" if seeds != default else "")
    )


if __name__ == "__main__":
    main()
