"""Per-query prompt selection and its scores: pure numpy functions over (rows, prompts) arrays.

``labels``: 1 correct / 0 wrong / -1 not observed. A selection is a prompt index per row; it is scored by the
logged label of that cell, so it may only pick observed cells (an unobserved pick has no outcome to score).
"""

from __future__ import annotations

import numpy as np


def best_of_n(scores: np.ndarray, observed: np.ndarray, candidates) -> np.ndarray:
    """argmax_{j in candidates, observed[i, j]} scores[i, j] per row i (first index on ties)."""
    candidates = np.asarray(candidates)
    masked = np.where(observed[:, candidates], scores[:, candidates], -np.inf)
    if np.isneginf(masked).all(axis=1).any():
        bad = np.flatnonzero(np.isneginf(masked).all(axis=1))[:5]
        raise ValueError(
            f"rows {bad.tolist()} have no observed label among prompts {candidates.tolist()}: "
            "selection could not be scored there"
        )
    return candidates[masked.argmax(axis=1)]


def best_of_n_with_default(
    scores: np.ndarray, observed: np.ndarray, candidates, default: int, margin: float
) -> np.ndarray:
    """Conservative best-of-N: the reward model's best candidate only where it beats the query-agnostic ``default``
    prompt by more than ``margin`` in predicted P(correct), else ``default`` (margin = inf: always the default)."""
    choice = best_of_n(scores, observed, candidates)
    rows = np.arange(len(choice))
    default_ok = observed[:, default]
    switch = ~default_ok | (scores[rows, choice] - np.where(default_ok, scores[:, default], -np.inf) > margin)
    return np.where(switch, choice, default)


def best_of_n_with_fallback(
    scores: np.ndarray, observed: np.ndarray, candidates, fallback_candidates, threshold: float
) -> np.ndarray:
    """Prompt-OIRL's rule (the authors' ``smart_combined``): the best candidate where its score reaches
    ``threshold``, else the best of ``fallback_candidates`` (the held-out prompts)."""
    choice = best_of_n(scores, observed, candidates)
    confident = scores[np.arange(len(choice)), choice] >= threshold
    return np.where(confident, choice, best_of_n(scores, observed, fallback_candidates))


def success_rate(labels: np.ndarray, choice: np.ndarray) -> float:
    """Mean logged correctness of the chosen cell per row."""
    picked = labels[np.arange(len(choice)), choice]
    if (picked < 0).any():
        raise ValueError("a selection picked an unobserved cell (label -1)")
    return float(picked.mean())


def best_single_prompt(train_labels: np.ndarray, candidates) -> int:
    """The query-agnostic choice: the candidate with the highest accuracy on its observed training cells."""
    candidates = np.asarray(candidates)
    return int(candidates[observed_accuracy(train_labels)[candidates].argmax()])


def observed_accuracy(labels: np.ndarray) -> np.ndarray:
    """Per-prompt accuracy over its observed cells (0 where none is observed): (P,)."""
    observed = labels >= 0
    return np.where(observed, labels, 0).sum(0) / np.maximum(observed.sum(0), 1)


def oracle_success_rate(labels: np.ndarray, candidates) -> float:
    """Upper bound of any selection: the share of rows where at least one candidate was correct."""
    return float((labels[:, np.asarray(candidates)] == 1).any(axis=1).mean())


def random_success_rate(labels: np.ndarray, candidates) -> float:
    """Expected success of a uniformly random observed candidate per row."""
    sub = labels[:, np.asarray(candidates)].astype(float)
    observed = sub >= 0
    return float((np.where(observed, sub, 0).sum(1) / observed.sum(1)).mean())


def classification_scores(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy and precision of ``prob >= threshold`` as a prediction of correctness, on observed cells."""
    observed = labels >= 0
    pred, truth = prob[observed] >= threshold, labels[observed] == 1
    positives = pred.sum()
    return {
        "accuracy": float((pred == truth).mean()),
        "precision": float((pred & truth).sum() / positives) if positives else float("nan"),
    }


def best_threshold(prob: np.ndarray, labels: np.ndarray) -> float:
    """The decision threshold with the highest accuracy on observed cells (chosen on validation rows)."""
    observed = labels >= 0
    p, y = prob[observed], labels[observed] == 1
    grid = np.unique(np.concatenate([np.quantile(p, np.linspace(0, 1, 101)), [0.5]]))
    accuracy = [((p >= t) == y).mean() for t in grid]
    return float(grid[int(np.argmax(accuracy))])


def paired_bootstrap_ci(
    labels: np.ndarray, choice: np.ndarray, baseline: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of success_rate(choice) - success_rate(baseline), resampling test rows with replacement."""
    from ..statistics import bootstrap_means, interval

    rows = np.arange(len(choice))
    diff = (labels[rows, choice] == 1).astype(float) - (labels[rows, baseline] == 1).astype(float)
    low, high = interval(bootstrap_means({"gain": diff}, n, seed)["gain"])
    return low, high
