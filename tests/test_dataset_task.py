"""task=dataset: every format reads the same rows, splits keep prompts apart, chat rows render with the template,
limits are applied and counted, and every bad input is refused with the config key and the fix."""

import json

import pytest

from trl_irl.models import build_char_tokenizer
from trl_irl.tasks import DatasetTask, make_task


def reversal_rows(n, repeats=1):
    words = ["ab", "cd", "ef", "gh", "ij"]
    rows = []
    for i in range(n):
        items = [words[(i + k) % 5] + str(i % 7) for k in range(2 + i % 3)]
        for _ in range(repeats):  # several demonstrations of one prompt
            rows.append(
                {
                    "prompt": "rev " + " ".join(items) + ":",
                    "completion": " ".join(reversed(items)),
                    "answer": " ".join(reversed(items)),
                    "split": "test" if i % 5 == 0 else "train",
                }
            )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_data(task, **kwargs):
    return task.data(build_char_tokenizer(task.alphabet), seed=0)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "save_to_disk"])
def test_every_format_reads_the_same_rows(fmt, tmp_path):
    from datasets import Dataset

    rows = reversal_rows(40)
    dataset = Dataset.from_list(rows)
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        dataset.to_csv(str(path))
    elif fmt == "parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    task = DatasetTask(str(path), verifier="exact")
    data = task_data(task)
    seen = {r["prompt"]: r["completion"] for r in data.train + data.validation + data.heldout}
    assert seen == {r["prompt"]: r["completion"] for r in rows}
    assert task.answer_column == "answer"  # picked up: the file has one


def test_splits_hold_whole_prompts_apart(tmp_path):
    rows = reversal_rows(60, repeats=2)  # two demonstrations per prompt
    task = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), heldout_fraction=0.2, validation_fraction=0.25)
    data = task_data(task)
    train, validation, heldout = ({r["prompt"] for r in part} for part in (data.train, data.validation, data.heldout))
    assert not (train & heldout) and not (train & validation) and not (validation & heldout)
    assert len(heldout) == 12  # ceil(0.2 * 60) prompts, with both their rows
    assert len(data.heldout) == 24
    assert len(data.train) + len(data.validation) == 96
    again = task_data(DatasetTask(task.path, heldout_fraction=0.2, validation_fraction=0.25))
    assert [r["prompt"] for r in again.heldout] == [r["prompt"] for r in data.heldout]  # task.seed fixes the split


def test_num_demonstrations_caps_training_rows_and_validation_follows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", reversal_rows(100))
    data = task_data(DatasetTask(path, num_demonstrations=20, validation_fraction=0.5, num_heldout=5))
    assert (len(data.train), len(data.validation), len(data.heldout)) == (20, 10, 5)
    assert not {r["prompt"] for r in data.train} & {r["prompt"] for r in data.validation}


def test_split_column_and_the_shared_prompt_warning(tmp_path):
    rows = reversal_rows(30)
    rows.append(dict(rows[0], split="validation"))  # neither train nor test: ignored, and counted
    leak = next(r for r in rows if r["split"] == "test")
    rows.append(dict(leak, split="train"))  # a held-out prompt also in training rows
    with pytest.warns(UserWarning, match="1 of 6 held-out prompts also appear in training rows"):
        task = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), split_column="split")
    data = task_data(task)
    assert {r["row"]["split"] for r in data.heldout} == {"test"}
    assert {r["row"]["split"] for r in data.train + data.validation} == {"train"}
    assert data.report["ignored_split_rows"] == 1 and data.report["heldout_prompts_in_train"] == 1
    with pytest.raises(
        ValueError,
        match=r"no rows with task.split_column=split = 'dev' \(task.heldout_split\); the "
        r"values found are \['test', 'train', 'validation'\]",
    ):
        DatasetTask(task.path, split_column="split", heldout_split="dev")


def test_chat_rows_render_with_the_tokenizers_template(tmp_path):
    rows = [
        {
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"}],
            "reply": [{"role": "assistant", "content": f"a{i}"}],
        }
        for i in range(20)
    ]
    task = DatasetTask(write_jsonl(tmp_path / "chat.jsonl", rows), prompt_column="messages", completion_column="reply")
    assert task.chat and set(": \nassistant") <= set(task.alphabet)
    data = task_data(task)
    row = next(r for r in data.train if r["completion"] == "a3" or r["prompt"].endswith("q3\nassistant: "))
    assert row["prompt"] == "system: be brief\nuser: q3\nassistant: " and row["completion"] == "a3"
    with pytest.raises(ValueError, match="holds chat messages, but the tokenizer has no chat template"):
        tokenizer = build_char_tokenizer(task.alphabet)
        tokenizer.chat_template = None
        task.data(tokenizer)


def test_length_limits_are_applied_and_counted(tmp_path):
    rows = [{"prompt": "p" * (3 + i % 4), "completion": "c" * (2 + i % 6)} for i in range(60)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    auto = task_data(DatasetTask(path))
    assert auto.max_completion_length == 8  # the longest demonstration (7 tokens) + EOS
    assert auto.report["truncated_completions"] == 0 and auto.max_prompt_length == 6
    data = task_data(DatasetTask(path, max_completion_length=4, max_prompt_length=5))
    everything = data.train + data.validation + data.heldout
    assert all(len(r["completion"]) <= 4 for r in everything)
    expected_cut = sum(len(r["completion"]) + 1 > 4 for r in everything)  # counted against what was kept
    assert data.report["truncated_completions"] == expected_cut > 0
    assert data.report["dropped_long_prompts"] == sum(len(r["prompt"]) > 5 for r in rows) == 15
    assert all(len(r["prompt"]) <= 5 for r in everything)
    with pytest.raises(
        ValueError,
        match=r"no training rows left with prompts of at most task.max_prompt_length=2 "
        r"tokens: raise it",
    ):
        task_data(DatasetTask(path, max_prompt_length=2))


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        (
            [{"question": "q", "completion": "c"}],
            {},
            r"task.prompt_column='prompt' is not a column of .* \(it has "
            r"\['completion', 'question'\]\): set task.prompt_column=<one of them>",
        ),
        ([{"prompt": "q", "completion": "c"}], {"answer_column": "gold"}, r"task.answer_column='gold' is not a column"),
        (
            [{"prompt": "q", "completion": "c"}] * 5 + [{"prompt": "  ", "completion": "c"}],
            {},
            r"1 row\(s\) have no usable 'prompt' \(task.prompt_column\): row 5 \(empty\)",
        ),
        (
            [{"prompt": "q", "completion": "c"}] * 3 + [{"prompt": "q", "completion": {"text": "c"}}],
            {},
            r"no usable 'completion' \(task.completion_column\): row 3 \(a dict, not text or chat messages\) \(rows "
            r"counted from 0; a JSONL line is row \+ 1\)",
        ),
        (
            [{"prompt": "q", "completion": "c"}] * 3 + [{"prompt": "q", "completion": True}],
            {},
            r"row 3 \(a bool, not text",
        ),
        (
            [{"prompt": [{"role": "user"}], "completion": "c"}],
            {},
            r"row 0 \(not a list of \{'role': str, 'content': str\}",
        ),
    ],
)
def test_bad_rows_are_refused_naming_the_key(rows, kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), **kwargs)


def test_numbers_in_a_csv_are_read_as_the_text_they_stand_for(tmp_path):
    """A CSV reader turns a column of answers into integers (quoted or not); the prompt, completion and answer are
    text, so they come back as written. An empty completion cell makes its row a rollout prompt."""
    lines = ["question,answer,gold"] + [f'"Add: {i} + {i} =",{2 * i},{i}.5' for i in range(1, 9)]
    (tmp_path / "add.csv").write_text("\n".join(lines) + "\n")
    task = DatasetTask(
        str(tmp_path / "add.csv"),
        prompt_column="question",
        completion_column="answer",
        answer_column="gold",
        verifier="exact",
    )
    rows = sorted(task.all_rows, key=lambda r: r["question"])
    assert [(r["question"], r["answer"], r["gold"]) for r in rows][:2] == [
        ("Add: 1 + 1 =", "2", "1.5"),
        ("Add: 2 + 2 =", "4", "2.5"),
    ]
    data = task_data(task)
    for row in data.train + data.heldout:  # the trainers' rows: the completion is the demonstration, as text
        assert isinstance(row["completion"], str) and task.verifier(row["prompt"], row["answer"], row) == 1.0
    (tmp_path / "gap.csv").write_text("prompt,completion\na,1\nb,\nc,3\nd,4\n")  # an empty cell: a rollout prompt
    assert [r["prompt"] for r in DatasetTask(str(tmp_path / "gap.csv")).rollout_rows] == ["b"]


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task.path=.*missing.jsonl: no such file or folder"):
        DatasetTask(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("prompt\tcompletion\n")
    with pytest.raises(ValueError, match=r"unknown format '.txt'; use one of .jsonl, .json, .csv, .parquet"):
        DatasetTask(str(tmp_path / "data.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder, but not one written by datasets.save_to_disk"):
        DatasetTask(str(tmp_path / "folder"))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"could not be read as .jsonl .*one JSON object per line"):
        DatasetTask(str(tmp_path / "broken.jsonl"))


def test_fractions_and_sizes_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", reversal_rows(10))
    with pytest.raises(ValueError, match=r"task.heldout_fraction must be in \(0, 1\), got 1.5"):
        DatasetTask(path, heldout_fraction=1.5)
    with pytest.raises(ValueError, match="task.num_demonstrations must be a positive integer or null, got 0"):
        DatasetTask(path, num_demonstrations=0)
    one_prompt = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "q", "completion": "c"}] * 2)
    with pytest.raises(
        ValueError,
        match=r"1 distinct prompt\(s\): holding out task.heldout_fraction=0.5 of them "
        "leaves none for training",
    ):
        DatasetTask(one_prompt, heldout_fraction=0.5)
    two_prompts = write_jsonl(
        tmp_path / "two.jsonl", [{"prompt": "q", "completion": "c"}, {"prompt": "r", "completion": "c"}]
    )
    with pytest.raises(ValueError, match="cannot give both training and validation rows"):
        task_data(DatasetTask(two_prompts, heldout_fraction=0.5))


def test_make_task_names_unknown_tasks_and_keys(tmp_path):
    with pytest.raises(ValueError, match=r"task.name='jsonl' is unknown: choose one of \['automaton', 'dataset'\]"):
        make_task({"name": "jsonl"})
    with pytest.raises(ValueError, match="unexpected keyword argument 'pth'.*fix the key under task:"):
        make_task({"name": "dataset", "pth": "x"})
