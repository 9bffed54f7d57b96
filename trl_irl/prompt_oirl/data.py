"""Prompting logs in the Prompt-OIRL layout: which prompt worked on which query, for one LLM on one dataset.

A log folder holds ``queries_<dataset>.csv`` (``row_id``, a split column, ``question``), ``prompts.csv``
(``prompt_idx``, ``role`` train/heldout, ``text``) and ``labels_<llm>_<dataset>.npz`` (``row_id`` (n,), ``labels``
(n, P) int8 in {1 correct, 0 wrong, -1 not observed}; optional ``critic_pred`` / ``critic_conf``, the LLM judging
its own answer). ``trl_irl/data/prompt_oirl/README.md`` documents the released logs (shipped with the package); point
``data.dir`` at your own logs in the same layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUERY_COLUMNS = ("row_id", "question")
PROMPT_COLUMNS = ("prompt_idx", "role", "text")


@dataclass
class PromptLogs:
    """One LLM's logs on one dataset, restricted to the rows of its labels file.

    ``labels[i, j]``: 1 / 0 / -1 (unobserved) for query ``queries[i]`` under prompt ``prompts[j]``;
    ``split[i]``: ``train`` or ``test`` (rows marked anything else are dropped at load time).
    """

    name: str
    queries: list[str]
    prompts: list[str]
    train_prompts: np.ndarray  # prompt indices with role "train": the only prompts a reward model learns from
    heldout_prompts: np.ndarray  # role "heldout": never seen in training, only scored
    labels: np.ndarray  # (n, P) int8
    split: np.ndarray  # (n,) str
    critic_pred: np.ndarray | None = None  # (n, P) int8, -1 = none
    critic_conf: np.ndarray | None = None  # (n, P) float32, NaN = none
    seen_in_train: np.ndarray | None = None  # (n,) bool: test rows whose exact question also occurs in train rows

    @property
    def observed(self) -> np.ndarray:
        return self.labels >= 0

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: data.dir must hold queries_<dataset>.csv, prompts.csv and "
            "labels_<llm>_<dataset>.npz (see trl_irl/prompt_oirl/data.py)"
        )
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path.name} lacks column(s) {missing}; it has {reader.fieldnames}")
        return list(reader)


def load_logs(directory: str | Path, dataset: str, llm: str, split: str = "split_paper") -> PromptLogs:
    """Read and validate one (dataset, llm) log; ``split`` names the queries-file column that says train/test."""
    directory = Path(directory)
    queries = _read_csv(directory / f"queries_{dataset}.csv", (*QUERY_COLUMNS, split))
    prompts = _read_csv(directory / "prompts.csv", PROMPT_COLUMNS)
    labels_path = directory / f"labels_{llm}_{dataset}.npz"
    if not labels_path.exists():
        found = sorted(p.name for p in directory.glob(f"labels_*_{dataset}.npz"))
        raise FileNotFoundError(
            f"{labels_path} does not exist: data.llm={llm!r} has no logs for data.dataset={dataset!r} (found {found})"
        )
    with np.load(labels_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key in ("row_id", "labels"):
        if key not in arrays:
            raise ValueError(f"{labels_path.name} lacks the array {key!r}; it has {sorted(arrays)}")

    labels, row_id = arrays["labels"], arrays["row_id"]
    n_prompts = len(prompts)
    if labels.ndim != 2 or labels.shape[1] != n_prompts:
        raise ValueError(
            f"{labels_path.name}: labels must be (rows, {n_prompts}) (one column per row of prompts.csv), "
            f"got shape {labels.shape}"
        )
    if row_id.shape != (labels.shape[0],):
        raise ValueError(
            f"{labels_path.name}: row_id must be ({labels.shape[0]},), one per labels row; got {row_id.shape}"
        )
    bad = np.setdiff1d(np.unique(labels), [-1, 0, 1])
    if bad.size:
        raise ValueError(
            f"{labels_path.name}: labels must be 1 (correct), 0 (wrong) or -1 (not observed); found {bad.tolist()}"
        )
    for key in ("critic_pred", "critic_conf"):
        if key in arrays and arrays[key].shape != labels.shape:
            raise ValueError(
                f"{labels_path.name}: {key} must have the labels' shape {labels.shape}, got {arrays[key].shape}"
            )
    if [int(p["prompt_idx"]) for p in prompts] != list(range(n_prompts)):
        raise ValueError("prompts.csv: prompt_idx must be 0, 1, ..., in order (it is the labels' column index)")
    roles = np.array([p["role"] for p in prompts])
    if not set(roles) <= {"train", "heldout"} or not (roles == "train").any():
        raise ValueError(
            f"prompts.csv: role must be 'train' or 'heldout', with at least one 'train'; got {sorted(set(roles))}"
        )

    by_id = {int(q["row_id"]): q for q in queries}
    if len(by_id) != len(queries):
        raise ValueError(f"queries_{dataset}.csv: row_id values must be unique")
    unknown = [int(r) for r in row_id if int(r) not in by_id]
    if unknown:
        raise ValueError(f"{labels_path.name}: row_id {unknown[:5]} not in queries_{dataset}.csv")
    if len(np.unique(row_id)) != len(row_id):
        raise ValueError(f"{labels_path.name}: row_id values must be unique")
    rows = [by_id[int(r)] for r in row_id]
    split_values = np.array([q[split] for q in rows])
    keep = np.isin(split_values, ["train", "test"])  # split_clean marks leaked rows "unused"
    if not (split_values[keep] == "test").any():
        raise ValueError(f"{split}: no 'test' rows among the labelled rows of {labels_path.name}")

    def kept(key):
        return arrays[key][keep] if key in arrays else None

    seen = None
    if "test_query_seen_in_train" in rows[0]:
        seen = np.array([q["test_query_seen_in_train"] == "1" for q in rows])[keep]
    return PromptLogs(
        name=f"{llm}/{dataset}/{split}",
        queries=[q["question"] for q, k in zip(rows, keep) if k],
        prompts=[p["text"] for p in prompts],
        train_prompts=np.flatnonzero(roles == "train"),
        heldout_prompts=np.flatnonzero(roles == "heldout"),
        labels=labels[keep].astype(np.int8),
        split=split_values[keep],
        critic_pred=kept("critic_pred"),
        critic_conf=kept("critic_conf"),
        seen_in_train=seen,
    )
