"""The Prompt-OIRL job (``trl-irl recipe=prompt_oirl``): logs -> features -> reward model chosen on validation
rows -> best-of-N prompt selection on the test split, scored once -> metrics.json + table + PNG.

Protocol (Sun, Hüyük, van der Schaar, ICLR 2024): the reward model learns r(query, prompt) ~ P(correct) from the
observed cells of training rows and training prompts only. The last ``data.val_fraction`` of the training rows (in
order, as the authors did) is the validation part on which the reward model, its hyperparameters and the accuracy
threshold are chosen; the chosen configuration is refit on every training row and the test split is scored once.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from ..results import finish
from ..validation import refusing
from . import selection as sel
from .data import PromptLogs, load_logs
from .features import EmbeddingCache, pair_features
from .reward_models import REWARD_MODELS, make_reward_model


def check_config(cfg: dict):
    """Fail on a bad config before any data is read or embedded."""
    for key in ("dir", "dataset", "llm", "split", "val_fraction", "val_by_text"):
        if key not in cfg["data"]:
            raise ValueError(f"data.{key} is missing")
    if not 0 < cfg["data"]["val_fraction"] < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {cfg['data']['val_fraction']}")
    if not cfg["rm"]["candidates"]:
        raise ValueError("rm.candidates is empty: give at least one reward model, e.g. {gbdt: {}}")
    if cfg["rm"]["name"] != "auto" and cfg["rm"]["name"] not in cfg["rm"]["candidates"]:
        raise ValueError(
            f"rm.name={cfg['rm']['name']!r} is not among rm.candidates {sorted(cfg['rm']['candidates'])}: "
            "use auto or one of them"
        )
    for name, params in cfg["rm"]["candidates"].items():
        kind = (params or {}).get("kind", name)
        if kind not in REWARD_MODELS:
            raise ValueError(f"rm.candidates.{name}: kind {kind!r} is unknown: choose one of {sorted(REWARD_MODELS)}")
    if not set(cfg["selection"]["ks"]) <= set(range(1, 100)):
        raise ValueError(f"selection.ks must be positive integers, got {cfg['selection']['ks']}")


class Features:
    """Pair features for the logs: sentence embeddings of queries and prompts, reduced with PCA (fit on training
    queries, and on every prompt text: no labels are used) so trees split on few, informative directions."""

    def __init__(self, logs: PromptLogs, cfg: dict, fit_rows: np.ndarray):
        from sklearn.decomposition import PCA

        cache = EmbeddingCache(cfg["model"], cfg["cache_dir"], cfg.get("batch_size", 64))
        queries, prompts = cache.embed(logs.queries), cache.embed(logs.prompts)
        self.num_embedded = cache.num_embedded
        if cfg["query_dims"]:
            pca = PCA(cfg["query_dims"], random_state=0).fit(queries[fit_rows])
            queries = pca.transform(queries)
        if cfg["prompt_dims"]:
            prompts = PCA(min(cfg["prompt_dims"], len(prompts) - 1), random_state=0).fit_transform(prompts)
        self.queries, self.prompts = queries.astype(np.float32), prompts.astype(np.float32)

    def cells(self, rows: np.ndarray, prompts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (row, prompt) cell of the grid as flat row and prompt index arrays, with its features."""
        r, p = np.repeat(rows, len(prompts)), np.tile(np.asarray(prompts), len(rows))
        return r, p, pair_features(self.queries, self.prompts, r, p)


def validation_split(logs: PromptLogs, train_rows: np.ndarray, fraction: float, by_text: bool):
    """(fit rows, validation rows): the last ``fraction`` of the training rows, in order (the authors' choice). With
    ``by_text``, the last ``fraction`` of the *distinct question texts* instead, so no validation question also sits
    in the fit rows: svamp repeats each question 4-5 times, and a row-wise split would score the reward model on
    questions it was trained on, as the paper split's test does (the clean split's test does not)."""
    if not by_text:
        n_val = max(1, int(round(len(train_rows) * fraction)))
        return train_rows[:-n_val], train_rows[-n_val:]
    texts = list(dict.fromkeys(logs.queries[i] for i in train_rows))
    held = set(texts[len(texts) - max(1, int(round(len(texts) * fraction))) :])
    is_val = np.array([logs.queries[i] in held for i in train_rows])
    return train_rows[~is_val], train_rows[is_val]


def fit_reward_model(
    kind: str, params: dict, features: Features, labels: np.ndarray, rows, prompts, seed: int, threads: int = 1
):
    """A reward model trained on the observed cells of ``rows`` x ``prompts`` only."""
    r, p, X = features.cells(rows, prompts)
    y = labels[r, p]
    observed = y >= 0
    return make_reward_model(kind, seed=seed, threads=threads, **params).fit(X[observed], y[observed])


def score_grid(model, features: Features, rows: np.ndarray, n_prompts: int) -> np.ndarray:
    """Reward-model scores of every (row, prompt) cell: (len(rows), n_prompts)."""
    _, _, X = features.cells(rows, np.arange(n_prompts))
    return model.predict(X).reshape(len(rows), n_prompts)


def lookup_scores(logs: PromptLogs, train_rows: np.ndarray, test_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leakage probe: each test query scored by the mean training label of the *same question text* per
    prompt (NaN where the text never occurs in training). Returns (scores (n_test, P), seen (n_test,))."""
    sums, counts = {}, {}
    for i in train_rows:
        q = logs.queries[i]
        obs = logs.labels[i] >= 0
        sums[q] = sums.get(q, 0) + np.where(obs, logs.labels[i], 0)
        counts[q] = counts.get(q, 0) + obs
    scores = np.full((len(test_rows), logs.labels.shape[1]), np.nan)
    for k, i in enumerate(test_rows):
        q = logs.queries[i]
        if q in sums:
            scores[k] = np.where(counts[q] > 0, sums[q] / np.maximum(counts[q], 1), np.nan)
    return scores, ~np.isnan(scores).all(axis=1)


def check(cfg: dict) -> PromptLogs:
    """The config and the logs' files, before any work: the logs ``run`` learns from."""
    d = cfg["data"]
    with refusing():
        check_config(cfg)
        logs = load_logs(d["dir"], d["dataset"], d["llm"], d["split"])
        train_rows = logs.rows("train")
        if len(train_rows) == 0 or not logs.observed[np.ix_(train_rows, logs.train_prompts)].any():
            raise ValueError(
                f"{logs.name}: no observed training cells (training rows x training prompts), so no "
                "reward model can be learnt. The released GPT-3.5 logs hold test rows only: use "
                "data.llm=llama2, or logs with labelled training rows"
            )
    return logs


# the config keys this job reads (recipe=prompt_oirl's, and the run's own)
JOB_KEYS = ("job", "seed", "threads", "data", "features", "rm", "selection", "output_dir")


def run(cfg: dict, out: Path, logs: PromptLogs | None = None) -> Path:
    """The whole job on the checked ``logs`` (``check``; read here when not given); returns the path of
    metrics.json."""
    start = time.perf_counter()
    d = cfg["data"]
    logs = check(cfg) if logs is None else logs
    train_rows, test_rows = logs.rows("train"), logs.rows("test")
    train_prompts, heldout = logs.train_prompts, logs.heldout_prompts
    fit_rows, val_rows = validation_split(logs, train_rows, d["val_fraction"], d["val_by_text"])
    seed = cfg["seed"]

    t0 = time.perf_counter()
    features = Features(logs, cfg["features"], fit_rows)
    timings = {"features": time.perf_counter() - t0}

    # --- choose the reward model, the switching margin and the threshold on the validation rows --------------
    t0 = time.perf_counter()
    validation = {}
    candidates = cfg["rm"]["candidates"]
    if cfg["rm"]["name"] != "auto":
        candidates = {cfg["rm"]["name"]: candidates[cfg["rm"]["name"]]}
    y_val, observed_val = logs.labels[val_rows], logs.observed[val_rows]
    default_val = sel.best_single_prompt(logs.labels[fit_rows], train_prompts)
    margins = [float(m) for m in cfg["selection"]["margins"]]
    for name, params in candidates.items():
        params = dict(params or {})
        kind = params.pop("kind", name)
        model = fit_reward_model(kind, params, features, logs.labels, fit_rows, train_prompts, seed, cfg["threads"])
        scores = score_grid(model, features, val_rows, logs.labels.shape[1])
        by_margin = {
            m: sel.success_rate(y_val, sel.best_of_n_with_default(scores, observed_val, train_prompts, default_val, m))
            for m in margins
        }
        margin = max(sorted(margins, reverse=True), key=by_margin.get)  # ties: the more conservative margin
        validation[name] = {
            "kind": kind,
            "params": params,
            "margin": margin,
            "selected_success_rate": by_margin[margin],
            "success_rate_by_margin": by_margin,
            "threshold": sel.best_threshold(scores[:, train_prompts], y_val[:, train_prompts]),
        }
    chosen = max(validation, key=lambda n: validation[n]["selected_success_rate"])
    kind, params = validation[chosen]["kind"], validation[chosen]["params"]
    margin, threshold = validation[chosen]["margin"], validation[chosen]["threshold"]
    timings["validation"] = time.perf_counter() - t0

    # --- refit on every training row; score the test split once ----------------------------------------------
    t0 = time.perf_counter()
    model = fit_reward_model(kind, params, features, logs.labels, train_rows, train_prompts, seed, cfg["threads"])
    scores = score_grid(model, features, test_rows, logs.labels.shape[1])
    y, observed = logs.labels[test_rows], logs.observed[test_rows]
    y_train = logs.labels[train_rows]
    majority = int((y_train[:, train_prompts][y_train[:, train_prompts] >= 0] == 1).mean() >= 0.5)
    best_single = sel.best_single_prompt(y_train, train_prompts)
    argmax = sel.best_of_n(scores, observed, train_prompts)
    choice = sel.best_of_n_with_default(scores, observed, train_prompts, best_single, margin)
    metrics = {
        "selected_success_rate": sel.success_rate(y, choice),
        "argmax_success_rate": sel.success_rate(y, argmax),  # the paper's rule: the RM's best, no default
        "switch_margin": margin,
        "switched_share": float((choice != best_single).mean()),
        # 95% paired-bootstrap intervals of the gain over the best single prompt (test rows resampled)
        "selected_gain_ci95": sel.paired_bootstrap_ci(y, choice, np.full(len(y), best_single), seed=seed),
        "argmax_gain_ci95": sel.paired_bootstrap_ci(y, argmax, np.full(len(y), best_single), seed=seed),
        "best_single_success_rate": sel.success_rate(y, np.full(len(y), best_single)),
        "best_single_prompt": best_single,
        "oracle_success_rate": sel.oracle_success_rate(y, train_prompts),
        "random_success_rate": sel.random_success_rate(y, train_prompts),
        "hindsight_best_single_success_rate": max(sel.success_rate(y, np.full(len(y), j)) for j in train_prompts),
        **_prefixed("rm_", sel.classification_scores(scores[:, train_prompts], y[:, train_prompts], threshold)),
        "majority_accuracy": sel.classification_scores(
            np.full(y[:, train_prompts].shape, float(majority)), y[:, train_prompts], 0.5
        )["accuracy"],
        "rm_threshold": threshold,
    }
    verdicts, confidence, unavailable = llm_judgements(logs, test_rows, train_prompts)
    if verdicts is not None:
        critic = verdicts[:, train_prompts].astype(float)
        metrics |= _prefixed("llm_self_critique_", sel.classification_scores(critic, y[:, train_prompts], 0.5))
        # selection by self-critique: a prompt whose answer the LLM judged correct, the best single one first
        judged = (verdicts == 1) + 1e-3 * sel.observed_accuracy(y_train)
        metrics["llm_self_critique_success_rate"] = sel.success_rate(y, sel.best_of_n(judged, observed, train_prompts))
    if confidence is not None:
        metrics["llm_confidence_success_rate"] = sel.success_rate(y, sel.best_of_n(confidence, observed, train_prompts))
    if len(heldout) and observed[:, heldout].all():  # held-out prompts were run on the test rows
        everything = np.concatenate([train_prompts, heldout])
        metrics |= {
            "heldout_selected_success_rate": sel.success_rate(y, sel.best_of_n(scores, observed, heldout)),
            "all_selected_success_rate": sel.success_rate(y, sel.best_of_n(scores, observed, everything)),
            "prompt_oirl_success_rate": sel.success_rate(
                y,
                sel.best_of_n_with_fallback(
                    scores, observed, train_prompts, heldout, cfg["selection"]["heldout_threshold"]
                ),
            ),
            "oracle_all_success_rate": sel.oracle_success_rate(y, everything),
            **_prefixed("rm_heldout_", sel.classification_scores(scores[:, heldout], y[:, heldout], threshold)),
            "majority_heldout_accuracy": sel.classification_scores(
                np.full(y[:, heldout].shape, float(majority)), y[:, heldout], 0.5
            )["accuracy"],
        }
        all_confidence = llm_judgements(logs, test_rows, everything)[1]
        if all_confidence is not None:
            metrics["llm_confidence_all_success_rate"] = sel.success_rate(
                y, sel.best_of_n(all_confidence, observed, everything)
            )
    if unavailable:
        metrics["baselines_unavailable"] = unavailable
        print("prompt_oirl: " + "; ".join(unavailable), flush=True)
    metrics["leakage"] = _leakage(logs, train_rows, test_rows, choice, train_prompts, best_single)
    timings["test"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_k = k_sweep(cfg["selection"], logs, features, kind, params, margin, train_rows, test_rows, seed, cfg["threads"])
    timings["k_sweep"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    result = {
        "metrics": _rounded(metrics),
        "per_k": _rounded(per_k),
        "reward_model": chosen,
        "validation": _rounded(validation),
        "data": {
            "name": logs.name,
            "train_rows": len(train_rows),
            "fit_rows": len(fit_rows),
            "val_rows": len(val_rows),
            "test_rows": len(test_rows),
            "texts_embedded_this_run": features.num_embedded,
        },
        "reference": _reference(Path(d["dir"]), d["llm"], d["dataset"]),
        "timings_s": _rounded(timings),
        "config": {k: v for k, v in cfg.items() if k in JOB_KEYS},  # not the main job's sections it never read
    }
    return finish(result, out / "metrics.json", lambda r, path: report(r, path.with_name("success_vs_k.png")))


def llm_judgements(logs: PromptLogs, test_rows: np.ndarray, prompts: np.ndarray):
    """The LLM's own judgements of the test rows, (verdicts, confidences, notes): the self-critique verdicts (n, P) and
    confidences (n, P, -inf where not logged) when the logs hold them for every test row on ``prompts``; else None,
    with a note saying why, so the baseline is reported unavailable rather than computed on part of the rows (a split
    of the user's own can put rows without self-critique logs in the test split)."""
    notes, out = [], []
    for name, array, missing, label in (
        ("critic_pred", logs.critic_pred, -1, "LLM self-critique"),
        ("critic_conf", logs.critic_conf, None, "LLM confidence"),
    ):
        if array is None:
            out.append(None)
            continue
        cells = array[test_rows][:, prompts]
        absent = np.isnan(cells) if missing is None else cells == missing
        absent &= logs.labels[test_rows][:, prompts] >= 0  # a cell never run has nothing to judge
        lacking = int(absent.any(axis=1).sum())
        if lacking:
            notes.append(f"{label} baseline unavailable: {lacking} of {len(test_rows)} test rows have no {name} logged")
            out.append(None)
        else:
            values = array[test_rows]
            out.append(np.nan_to_num(values, nan=-np.inf) if missing is None else values)
    return out[0], out[1], notes


def k_sweep(cfg: dict, logs, features, kind, params, margin, train_rows, test_rows, seed, threads=1) -> dict:
    """For each K in ``cfg["ks"]``: K-subsets of the training prompts (all of them, or ``max_subsets`` drawn with
    the run's seed), each with its own reward model trained on that subset's cells only. Mean over subsets of the
    success of: the selection (best-of-K with the validated margin over the subset's best single prompt), the
    subset's best single prompt by training accuracy, a random prompt, the oracle; with held-out prompts, also the
    RM's best of K + held-out and Prompt-OIRL's rule (best of K, a held-out prompt below ``heldout_threshold``)."""
    y, observed = logs.labels[test_rows], logs.observed[test_rows]
    y_train = logs.labels[train_rows]
    heldout = logs.heldout_prompts if len(logs.heldout_prompts) and observed[:, logs.heldout_prompts].all() else []
    rng = np.random.default_rng(seed)
    per_k = {}
    for k in cfg["ks"]:
        subsets = list(itertools.combinations(logs.train_prompts, k))
        if not subsets:
            continue
        if cfg["max_subsets"] and len(subsets) > cfg["max_subsets"]:
            subsets = [subsets[i] for i in sorted(rng.choice(len(subsets), cfg["max_subsets"], replace=False))]
        rows = []
        for subset in subsets:
            model = fit_reward_model(kind, params, features, logs.labels, train_rows, subset, seed, threads)
            scores = score_grid(model, features, test_rows, logs.labels.shape[1])
            default = sel.best_single_prompt(y_train, subset)
            argmax = sel.best_of_n(scores, observed, subset)
            row = {
                "selected": sel.success_rate(y, sel.best_of_n_with_default(scores, observed, subset, default, margin)),
                "argmax": sel.success_rate(y, argmax),
                "best_single": sel.success_rate(y, np.full(len(y), default)),
                "oracle": sel.oracle_success_rate(y, subset),
                "random": sel.random_success_rate(y, subset),
            }
            if len(heldout):
                row["with_heldout"] = sel.success_rate(
                    y, sel.best_of_n(scores, observed, np.concatenate([subset, heldout]))
                )
                row["prompt_oirl"] = sel.success_rate(
                    y, sel.best_of_n_with_fallback(scores, observed, subset, heldout, cfg["heldout_threshold"])
                )
            rows.append(row)
        per_k[str(k)] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"subsets": len(rows)}
    return per_k


def _leakage(logs, train_rows, test_rows, choice, train_prompts, best_single) -> dict:
    """How much of the result test queries seen in training explain (svamp's paper split repeats every test
    question in its training rows): success on seen vs unseen test rows, and a pure same-text lookup baseline."""
    y = logs.labels[test_rows]
    lookup, seen = lookup_scores(logs, train_rows, test_rows)
    prior = np.zeros(logs.labels.shape[1])
    prior[best_single] = 1e-6  # unseen questions (and ties) fall back to the best single prompt
    lookup_choice = sel.best_of_n(np.nan_to_num(lookup, nan=0.0) + prior, logs.observed[test_rows], train_prompts)
    out = {
        "share_test_seen_in_train": float(seen.mean()),
        "lookup_selected_success_rate": sel.success_rate(y, lookup_choice),
    }
    for name, mask in (("seen", seen), ("unseen", ~seen)):
        if mask.any():
            out[f"selected_success_rate_{name}"] = sel.success_rate(y[mask], choice[mask])
            out[f"best_single_success_rate_{name}"] = float((y[mask, best_single] == 1).mean())
    return out


def _reference(directory: Path, llm: str, dataset: str) -> dict:
    """The paper's and the authors' numbers for this (llm, dataset), when the logs ship reference_numbers.json."""
    path = directory / "reference_numbers.json"
    if not path.exists():
        return {}
    ref = json.loads(path.read_text())
    names = {"llama2": "LLaMA-2-7B-chat", "gpt35": "GPT-3.5-turbo"}
    key = f"{names.get(llm, llm)} / {'GSM8K' if dataset == 'gsm8k' else 'SVAMP'}"
    out = {}
    if key in ref.get("authors_result_arrays", {}):
        out["authors_per_k"] = ref["authors_result_arrays"][key]["per_K"]
    table = ref.get("paper_table3", {}).get("GSM8K" if dataset == "gsm8k" else "SVAMP", {})
    column = {"llama2": "LLaMA2-7B-Chat", "gpt35": "GPT-3.5-turbo"}.get(llm)
    out["paper_table3"] = {row: v[column] for row, v in table.items() if column in v}
    return out


def report(result: dict, png: Path):
    from rich.console import Console
    from rich.table import Table

    m, ref = result["metrics"], result["reference"].get("authors_per_k", {})
    k6 = ref.get("6", {})
    table = Table(title=f"Prompt-OIRL on {result['data']['name']} (test split; reward model: {result['reward_model']})")
    for col in ("quantity", "ours", "authors' arrays (K=6)"):
        table.add_column(col, justify="right")
    rows = [
        ("selected: RM best of training prompts, validated margin", m["selected_success_rate"], None),
        (
            "RM best of training prompts (argmax)",
            m["argmax_success_rate"],
            k6.get('RM best-of-K training prompts ("IRL Test 0")'),
        ),
        ("best single prompt (by training accuracy)", m["best_single_success_rate"], None),
        (
            "best single prompt in hindsight (test)",
            m["hindsight_best_single_success_rate"],
            k6.get("training_best (max test acc in subset)"),
        ),
        (
            "Prompt-OIRL: training, held-out fallback",
            m.get("prompt_oirl_success_rate"),
            k6.get('Prompt-OIRL ("IRL Test 10", smart_combined)'),
        ),
        ("RM best of all prompts", m.get("all_selected_success_rate"), k6.get('RM best-of-(K+10) ("Naive Mixture")')),
        ("LLM confidence selection", m.get("llm_confidence_success_rate"), k6.get("LLM confidence within subset")),
        ("LLM self-critique selection", m.get("llm_self_critique_success_rate"), None),
        ("random prompt", m["random_success_rate"], None),
        ("oracle (any training prompt correct)", m["oracle_success_rate"], None),
        ("RM accuracy (Q)", m["rm_accuracy"], k6.get("RM accuracy, training prompts (Q)")),
        ("majority-class accuracy (Q)", m["majority_accuracy"], None),
        ("RM precision (Q)", m["rm_precision"], k6.get("RM precision (Q)")),
        (
            "RM accuracy (P, held-out prompts)",
            m.get("rm_heldout_accuracy"),
            k6.get("RM accuracy, held-out prompts (P)"),
        ),
        ("LLM self-critique accuracy (Q)", m.get("llm_self_critique_accuracy"), None),
    ]
    for name, ours, theirs in rows:
        if isinstance(ours, (int, float)):
            table.add_row(name, f"{ours:.3f}", f"{theirs:.3f}" if isinstance(theirs, (int, float)) else "")
    Console().print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_k = result["per_k"]
    ks = [int(k) for k in per_k]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("selected", "RM best-of-K (validated margin)"),
        ("argmax", "RM best-of-K (argmax)"),
        ("with_heldout", "RM best-of-(K + held-out)"),
        ("prompt_oirl", "Prompt-OIRL (held-out fallback)"),
        ("best_single", "best single (train acc)"),
        ("random", "random prompt"),
        ("oracle", "oracle"),
    ):
        if all(key in per_k[str(k)] for k in ks):
            ax.plot(ks, [per_k[str(k)][key] for k in ks], marker="o", label=label)
    if ref:
        ax.plot(
            [int(k) for k in ref],
            [v['RM best-of-K training prompts ("IRL Test 0")'] for v in ref.values()],
            linestyle=":",
            color="grey",
            label="authors: RM best-of-K",
        )
    ax.set_xlabel("K training prompts")
    ax.set_ylabel("test success rate (mean over K-subsets)")
    ax.set_title(result["data"]["name"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _prefixed(prefix: str, d: dict) -> dict:
    return {prefix + k: v for k, v in d.items()}


def _rounded(x):
    if isinstance(x, dict):
        return {str(k): _rounded(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [_rounded(v) for v in x]
    if isinstance(x, float):
        if np.isnan(x):
            return None  # undefined (a precision with no positive prediction)
        return round(x, 4) if np.isfinite(x) else str(x)  # strict JSON has no inf: "inf" (switch_margin)
    return x
