"""Rollout prompts (``task.rollout_path``, rows without a completion): the pools' counts, no held-out prompt in any
pool, the Bradley-Terry pairing of a sample on a prompt without a demonstration, the RL arms rolling out on them in
the job, and the bad inputs refused before any model loads."""

import json

import pytest
import torch

from trl_irl.models import build_char_tokenizer
from trl_irl.stages.context import open_context
from trl_irl.stages.training import (
    behaviour_cloning,
    build_policy_trainer,
    reward_pretraining,
)
from trl_irl.tasks import DatasetTask


def word(i: int) -> str:
    return "".join(chr(97 + int(d)) for d in format(i + 8, "o"))  # distinct for every i: i + 8 in octal, as letters


def demo_rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"rev {word(i)}=", "completion": word(i)[::-1]} for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data_of(task):
    return task.data(build_char_tokenizer(task.alphabet), seed=0)


@pytest.fixture
def files(tmp_path):
    """40 demonstrations and 4 rows without one (one a repeat, one the prompt of a demonstration); a rollout file of
    10 prompts with answers (one a repeat of a row above) and a new character ('z')."""
    main = (
        demo_rows(40)
        + [{"prompt": f"rev {word(i)}=", "completion": ""} for i in (100, 101, 101)]
        + [{"prompt": "rev " + word(3) + "=", "completion": None}]
    )
    rollout = [{"prompt": f"rev {word(i)}=", "answer": word(i)[::-1]} for i in range(200, 209)] + [
        {"prompt": f"rev {word(100)}=", "answer": word(100)[::-1]},
        {"prompt": "rev zz=", "answer": "zz"},
    ]
    return write_jsonl(tmp_path / "main.jsonl", main), write_jsonl(tmp_path / "rollout.jsonl", rollout)


def test_pools_hold_every_rollout_prompt_once_and_no_heldout_prompt(files):
    main, rollout = files
    task = DatasetTask(main, rollout_path=rollout, verifier="exact")
    data = data_of(task)
    prompts = lambda rows: {r["prompt"] for r in rows}  # noqa: E731
    expected = {f"rev {word(i)}=" for i in (100, 101, *range(200, 209))} | {"rev zz="}
    assert prompts(data.rollout) == expected and len(data.rollout) == 12
    assert all(r["completion"] is None for r in data.rollout)
    # the main file has no answer column, so its rows without a completion have no answer; the rollout file's
    # `answer` column gives theirs, also to a prompt first read from the main file (100)
    answered = {r["prompt"]: r["answer"] for r in data.rollout if r["answer"] is not None}
    assert set(answered) == expected - {f"rev {word(101)}="}
    assert answered["rev zz="] == "zz" and answered[f"rev {word(100)}="] == word(100)[::-1]
    r = data.report
    assert (r["rollout_prompts_read"], r["rollout_prompts_with_demonstration"], r["rollout_prompts_repeated"]) == (
        15,
        1,
        2,
    )
    assert (r["rollout_prompts"], r["rollout_prompts_with_answer"], r["heldout_prompts_in_rollout"]) == (12, 11, 0)
    assert (
        r["rows_without_demonstration"] == 4 and r["rows_read"] == 44 and r["demonstration_prompts"] == len(data.train)
    )
    heldout = prompts(data.heldout)
    for pool in ("mixed", "rollout", "demonstrations"):
        data.rollout_pool = pool
        for verifier in (False, True):
            assert not prompts(data.policy_rows(verifier)) & (heldout | prompts(data.validation))
    data.rollout_pool = "mixed"
    assert data.policy_rows() == data.train + data.rollout
    assert data.policy_rows(verifier=True) == data.train + [r for r in data.rollout if r["answer"] is not None]
    data.rollout_pool = "rollout"
    assert data.policy_rows() == data.rollout
    data.rollout_pool = "demonstrations"
    assert data.policy_rows() == data.train
    assert "z" in task.alphabet  # the tiny model's tokenizer can write the rollout prompts


def test_the_report_counts_the_pool_each_rl_arm_rolls_out_on(files):
    main, rollout = files
    for pool in ("mixed", "rollout", "demonstrations"):
        data = data_of(DatasetTask(main, rollout_path=rollout, verifier="exact", rollout_pool=pool))
        assert data.report["online_irl_pool"] == len(data.policy_rows()), pool
        assert data.report["oracle_pool"] == len(data.policy_rows(verifier=True)), pool
        # counted by hand: 12 rollout prompts, 11 of them answered (test above), beside the training prompts
        n = len(data.train)
        expected = {"mixed": (n + 12, n + 11), "rollout": (12, 11), "demonstrations": (n, n)}[pool]
        assert (data.report["online_irl_pool"], data.report["oracle_pool"]) == expected, pool


def test_a_rollout_file_may_answer_some_of_its_prompts(tmp_path):
    """A prompt without an answer (empty, or no cell) is the online-IRL arm's alone; the oracle's pool has the rest."""
    rollout = [{"prompt": "rev zz=", "answer": "zz"}, {"prompt": "rev zy=", "answer": ""}, {"prompt": "rev zx="}]
    data = data_of(
        DatasetTask(
            write_jsonl(tmp_path / "d.jsonl", demo_rows(20)),
            rollout_path=write_jsonl(tmp_path / "r.jsonl", rollout),
            verifier="exact",
        )
    )
    assert {r["prompt"]: r["answer"] for r in data.rollout} == {"rev zz=": "zz", "rev zy=": None, "rev zx=": None}
    assert data.report["rollout_prompts_with_answer"] == 1
    assert data.report["oracle_pool"] == len(data.train) + 1 and data.report["online_irl_pool"] == len(data.train) + 3


def test_the_cap_draws_rollout_prompts_by_the_task_seed(files):
    main, rollout = files
    full = data_of(DatasetTask(main, rollout_path=rollout)).rollout
    capped = data_of(DatasetTask(main, rollout_path=rollout, num_rollout_prompts=5)).rollout
    assert (
        capped == full[:5] and data_of(DatasetTask(main, rollout_path=rollout, num_rollout_prompts=5)).rollout == capped
    )
    other = data_of(DatasetTask(main, rollout_path=rollout, num_rollout_prompts=5, seed=1)).rollout
    assert {r["prompt"] for r in other} != {r["prompt"] for r in capped}
    assert data_of(DatasetTask(main, rollout_path=rollout, num_rollout_prompts=500)).report["rollout_prompts"] == 12


def test_a_file_of_demonstrations_alone_is_as_before(tmp_path):
    """No rollout prompt: the same rows, split and report as without the feature (the default run's figures)."""
    path = write_jsonl(tmp_path / "d.jsonl", demo_rows(30))
    data = data_of(DatasetTask(path))
    assert data.rollout == [] and data.policy_rows() == data.train and data.policy_rows(verifier=True) == data.train
    assert not {k for k in data.report if "rollout" in k or "demonstration" in k}


def test_a_split_column_keeps_rows_without_demonstration_out_of_the_heldout_rows(tmp_path):
    rows = [dict(r, split="test" if i < 5 else "train") for i, r in enumerate(demo_rows(20))]
    rows += [{"prompt": "rev q=", "completion": "", "split": "train"}, {"prompt": "rev r=", "split": "other"}]
    task = DatasetTask(write_jsonl(tmp_path / "s.jsonl", rows), split_column="split")
    assert [r["prompt"] for r in task.rollout_rows] == ["rev q="]
    assert task.report["ignored_split_rows"] == 1 and len(task.heldout_rows) == 5 and len(task.train_rows) == 15
    rows.append({"prompt": "rev s=", "completion": None, "split": "test"})
    with pytest.raises(
        ValueError,
        match=r"1 held-out row\(s\) \(task.split_column=split = 'test'\) have no "
        r"demonstration in task.completion_column.*move them to the training split",
    ):
        DatasetTask(write_jsonl(tmp_path / "s2.jsonl", rows), split_column="split")


@pytest.mark.parametrize(
    "rows, rollout, kwargs, message",
    [
        (
            None,
            [{"prompt": "rev {heldout}="}],
            {"split_column": "split"},
            r"1 rollout prompt\(s\) are also held-out prompts, which are only evaluated: 'rev .*=' "
            r"\(task.rollout_path\)\. "
            r"Remove them from the rollout prompts",
        ),
        (
            None,
            [{"question": "rev zz="}],
            {},
            r"task.prompt_column='prompt' is not a column of task.rollout_path=.*"
            r"\(it has \['question'\]\)",
        ),
        (
            None,
            [{"prompt": "rev zz="}, {"prompt": ""}],
            {},
            r"task.rollout_path=.*: its line 2 is unusable: prompt empty",
        ),
        (
            None,
            None,
            {"rollout_pool": "rollout"},
            r"task.rollout_pool=rollout, but no rollout prompt is left: give prompts "
            r"without demonstrations",
        ),
        (
            None,
            [{"prompt": "rev zz="}],
            {"rollout_pool": "both"},
            r"task.rollout_pool='both' is unknown: choose one of "
            r"mixed, rollout, demonstrations",
        ),
        (
            None,
            [{"prompt": "rev zz="}],
            {"num_rollout_prompts": 0},
            r"task.num_rollout_prompts must be a positive integer",
        ),
        (
            [{"prompt": "rev a=", "completion": ""}, {"prompt": "rev b="}],
            None,
            {},
            r"none of its 2 row\(s\) has a demonstration in its 'completion' column\. .*task.rollout_path",
        ),
    ],
)
def test_bad_rollout_inputs_are_refused(rows, rollout, kwargs, message, tmp_path):
    rows = rows or [dict(r, split="test" if i < 5 else "train") for i, r in enumerate(demo_rows(20))]
    if rollout and "{heldout}" in rollout[0].get("prompt", ""):
        rollout = [{"prompt": rows[0]["prompt"]}]
    if "answer_column" in kwargs:
        rows = [dict(r, answer=r["completion"]) for r in rows]
    extra = {"rollout_path": write_jsonl(tmp_path / "r.jsonl", rollout)} if rollout else {}
    with pytest.raises(ValueError, match=message):
        data_of(DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), **kwargs, **extra))


# --- the pairing of a sample without a demonstration -----------------------------------------------------------------


def tiny_reward(tokenizer):
    import tempfile

    from trl_irl.models import build_tiny_causal_lm, load_reward_model, save_model

    folder = tempfile.mkdtemp()
    save_model(build_tiny_causal_lm(tokenizer, 32, 2, 2, 64, max_positions=64, seed=0), tokenizer, folder)
    return load_reward_model(folder, "classifier", tokenizer.pad_token_id)


def test_a_sample_without_demonstration_is_paired_with_a_drawn_demonstration_and_bt_reads_both_prompts():
    """The draw is the updater's generator's (so a resume draws the same), a row with its own demonstration keeps
    it, and the Bradley-Terry loss of the update is -log sigmoid(r(x_demo, y_demo) - r(x, y_sample)), computed here
    from the reward model's own scores of the two texts."""
    from trl_irl.rewards import OnlineRewardUpdater, make_objective

    tokenizer = build_char_tokenizer(list("abcdefghrv =xyz"))
    pool = [("rev ab=", "ba"), ("rev cd=", "dc"), ("rev ef=", "fe")]
    updater = OnlineRewardUpdater(
        tiny_reward(tokenizer),
        tokenizer,
        make_objective("bt"),
        learning_rate=1e-3,
        weight_decay=0.0,
        batch_size=1,
        steps=1,
        buffer_size=8,
        max_grad_norm=1.0,
        seed=7,
        demonstrations=pool,
    )
    expected_draw = torch.randint(3, (1,), generator=torch.Generator().manual_seed(7)).item()
    updater.add(["rev xy=", "rev gh="], [None, "hg"], ["xy", "gh"])
    (unpaired, paired) = list(updater.buffer.items)
    demo_prompt, demo = pool[expected_draw]
    assert unpaired == ("rev xy=", demo, "xy", demo_prompt) and paired == ("rev gh=", "hg", "gh", "rev gh=")

    updater.buffer.items.pop()  # the update draws its one pair from a buffer of the unpaired sample alone
    r_demo = updater.rewards([demo_prompt], [demo]).item()
    r_sample = updater.rewards(["rev xy="], ["xy"]).item()
    metrics = updater.update()
    assert metrics["loss"] == pytest.approx(
        torch.nn.functional.softplus(torch.tensor(r_sample - r_demo)).item(), rel=1e-4
    )
    assert metrics["ties"] == 0.0  # another prompt's demonstration is never the sample itself

    with pytest.raises(ValueError, match=r"1 sample\(s\) have no demonstration .* pass demonstrations="):
        OnlineRewardUpdater(
            updater.model,
            tokenizer,
            make_objective("bt"),
            learning_rate=1e-3,
            weight_decay=0.0,
            batch_size=1,
            steps=1,
            buffer_size=8,
            max_grad_norm=1.0,
            seed=7,
        ).add(["p"], [None], ["s"])


def test_a_buffer_saved_before_pairing_loads_with_each_row_its_own_demonstrations_prompt(tmp_path):
    from trl_irl.rewards import OnlineRewardUpdater, make_objective

    tokenizer = build_char_tokenizer(list("abcdefghrv =xyz"))

    def make():
        return OnlineRewardUpdater(
            tiny_reward(tokenizer),
            tokenizer,
            make_objective("bt"),
            learning_rate=1e-3,
            weight_decay=0.0,
            batch_size=1,
            steps=1,
            buffer_size=8,
            max_grad_norm=1.0,
            seed=7,
        )

    updater = make()
    updater.add(["rev ab="], ["ba"], ["ab"])
    updater.save(tmp_path / "state")
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    state["buffer"] = [item[:3] for item in state["buffer"]]  # the three-field rows an older checkpoint holds
    (tmp_path / "state" / "state.json").write_text(json.dumps(state))
    loaded = make()
    loaded.load(tmp_path / "state")
    assert list(loaded.buffer.items) == [("rev ab=", "ba", "ab", "rev ab=")]


# --- the job -----------------------------------------------------------------------------------------------------


def test_the_rl_arms_roll_out_on_the_rollout_prompts(files, tmp_path):
    """Online IRL trains on demonstration and rollout prompts (``mixed``), its buffer pairing each rollout sample with
    a demonstration of another prompt; the oracle rolls out only where there is an answer; the counts reach
    metrics.json's ``task`` report."""
    from test_dataset_pipeline import SMALL, composed

    from trl_irl.plan import RunPlan

    main, rollout = files
    p = RunPlan(
        composed(
            "task=dataset",
            f"task.path={main}",
            f"task.rollout_path={rollout}",
            "task.verifier=exact",
            "task.rollout_pool=rollout",
            *SMALL,
            "bc.num_train_epochs=1",
            f"output_dir={tmp_path / 'run'}",
        )
    )
    p = open_context(p)
    bc = behaviour_cloning(p)
    oracle = build_policy_trainer(p, "oracle", bc, max_steps=1)
    assert set(oracle.train_dataset["prompt"]) == {r["prompt"] for r in p.data.rollout if r["answer"] is not None}
    assert len(oracle.train_dataset) == 11
    irl = build_policy_trainer(p, "grpo", bc, reward_pretraining(p, bc), max_steps=2)
    assert set(irl.train_dataset["prompt"]) == {r["prompt"] for r in p.data.rollout}
    irl.train()
    items = list(irl.reward_updater.buffer.items)
    demonstrations = {(r["prompt"], r["completion"]) for r in p.data.train}
    assert len(items) == 16 and all(
        (demo_prompt, demo) in demonstrations and prompt != demo_prompt for prompt, demo, _, demo_prompt in items
    )
    assert {prompt for prompt, *_ in items} <= {r["prompt"] for r in p.data.rollout}
    assert p.data.report["rollout_pool"] == "rollout" and p.data.report["rollout_prompts"] == 12


def test_an_oracle_without_answered_rollout_prompts_is_refused_before_any_model(tmp_path):
    from test_dataset_pipeline import composed

    from trl_irl.plan import RunPlan

    main = write_jsonl(tmp_path / "m.jsonl", demo_rows(30) + [{"prompt": "rev zz=", "completion": ""}])
    with pytest.raises(
        ValueError,
        match=r"the oracle arm rolls out on prompts with an answer for the verifier, and "
        r"task.rollout_pool=rollout leaves none",
    ):
        RunPlan(
            composed(
                "task=dataset",
                f"task.path={main}",
                "task.verifier=exact",
                "task.rollout_pool=rollout",
                f"output_dir={tmp_path / 'run'}",
            )
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arm", ["grpo", "oracle"])
def test_a_pool_smaller_than_one_generation_batch_is_refused_before_any_model(arm, tmp_path):
    """TRL's sampler drops a generation batch it cannot fill with distinct prompts: 3 prompts for a batch of 4
    (16 completions in groups of 4) would train the arm 0 steps; 4 are enough."""
    from test_dataset_pipeline import composed

    from trl_irl.plan import RunPlan

    rollout = [{"prompt": f"rev {word(i)}=", "answer": word(i)[::-1]} for i in range(200, 204)]

    def plan(prompts: int):
        return RunPlan(
            composed(
                "task=dataset",
                f"task.path={write_jsonl(tmp_path / 'm.jsonl', demo_rows(30))}",
                f"task.rollout_path={write_jsonl(tmp_path / 'r.jsonl', rollout[:prompts])}",
                "task.verifier=exact",
                "task.rollout_pool=rollout",
                f"arms=[bc,{arm}]",
                "algo.per_device_train_batch_size=16",
                "algo.num_generations=4",
                f"output_dir={tmp_path / 'run'}",
            )
        )

    which = "prompts with an answer in " if arm == "oracle" else ""
    with pytest.raises(
        ValueError,
        match=rf"{arm}: one generation batch samples 4 distinct prompts .*and the {which}task.rollout_pool=rollout "
        r"pool holds 3, so the arm would train 0 steps",
    ):
        plan(3)
    assert not (tmp_path / "run").exists()
    assert plan(4).data.report["online_irl_pool"] == 4


def test_sdft_with_fewer_demonstration_prompts_than_one_generation_batch_is_refused(tmp_path):
    from test_dataset_pipeline import composed

    from trl_irl.plan import RunPlan

    with pytest.raises(
        ValueError,
        match=r"sdft: one generation batch samples 128 distinct prompts \(256 completions: "
        r"sdft.per_device_train_batch_size=256 .*and the demonstration prompts number \d+, so the arm would train 0 "
        r"steps: give more demonstrations, or lower sdft.per_device_train_batch_size",
    ):
        RunPlan(
            composed(
                "task=dataset",
                f"task.path={write_jsonl(tmp_path / 'm.jsonl', demo_rows(30))}",
                "arms=[bc,sdft]",
                "sdft.per_device_train_batch_size=256",
                "sdft.num_generations=2",
                f"output_dir={tmp_path / 'run'}",
            )
        )


def test_a_run_with_few_held_out_prompts_says_its_intervals_are_wide(tmp_path):
    from test_dataset_pipeline import composed

    from trl_irl.plan import RunPlan

    path = write_jsonl(tmp_path / "m.jsonl", demo_rows(30))
    plan = RunPlan(composed("task=dataset", f"task.path={path}", f"output_dir={tmp_path / 'a'}"))
    n = len(plan.data.heldout)
    assert 0 < n < 30 and any(
        note.startswith(f"task: {n} held-out prompts: every success rate and interval is over these alone")
        and "task.heldout_fraction, task.num_heldout" in note
        for note in plan.notes
    )
    plan = RunPlan(composed("recipe=toy", f"output_dir={tmp_path / 'b'}"))  # 32 held-out prompts: nothing said
    assert len(plan.data.heldout) == 32 and not any("held-out prompts" in note for note in plan.notes)
