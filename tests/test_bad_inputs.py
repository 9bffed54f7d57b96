"""Every bad input of the table in docs/errors.md is refused before anything is written or any model loads, with
the message the table shows, from the command line and from Python alike (one voice: only the fix differs, written
for where the user is). ``python tests/test_bad_inputs.py`` prints the table (run it after changing a message).

Both front doors run in process: ``trl_irl.cli.entry`` with ``sys.argv`` set (Hydra's job must never start) and
``trl_irl.run``; each composes the config and stops at the check, so the whole table takes seconds. ``{data}`` is a
small valid JSONL, ``{missing}`` a path that does not exist, ``{text}`` a file of an unknown format, ``{empty}`` an
empty file, ``{blank}`` a JSONL whose one row has an empty completion, ``{prompts}`` a JSONL of its prompts only,
``{fresh}`` a JSONL of other prompts (no answers),
``{long}`` a JSONL where one demonstration is 5,000 characters, ``{raises}`` / ``{yes}`` verifier modules that raise
on text they cannot read / return "yes", ``{run}`` the folder of a finished run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

import trl_irl
from trl_irl import cli

DATA = ("task=dataset", "task.path={data}")
BAD_INPUTS = [
    # (overrides, a fragment of the error)
    (("+sead=3",), "unknown config key sead (on the command line: +sead=3): did you mean seed?"),
    (
        ("algo.lerning_rate=1",),
        "unknown config key algo.lerning_rate (on the command line: algo.lerning_rate=1): did "
        "you mean algo.learning_rate?",
    ),
    (("+taks.horizon=3",), "unknown config key taks"),
    (
        ("+eval.batchsize=3",),
        "unknown config key eval.batchsize (on the command line: +eval.batchsize=3): did you mean eval.batch_size?",
    ),
    (("+reward.prefix_wieght=1",), "did you mean reward.prefix_weight?"),
    (("+bc.lerning_rate=1",), "did you mean bc.learning_rate?"),
    (("+spin.round=3",), "did you mean spin.rounds?"),
    (("+algo.lerning_rate=1",), "unknown key(s) ['lerning_rate'] under algo"),
    (("+bc.extra.lerning_rate=1",), "unknown key(s) ['lerning_rate'] under bc"),
    (("+reward.online.lerning_rate=1",), "unknown key(s) ['lerning_rate'] under reward.online"),
    (("+algo.reward_learning_rate=1",), "algo: ['reward_learning_rate'] are set from ['reward.online.learning_rate']"),
    (("+reward.pretrain.objective=gail",), "reward.pretrain: ['objective'] are set from ['reward.objective']"),
    (("+reward.pretrain.epochs=1",), "unknown key(s) ['epochs'] under reward.pretrain"),
    (("+credit.gama=0.9",), "unknown key(s) ['gama'] under credit"),
    (("seed=abc",), "seed='abc': must be an integer"),
    (("threads=0",), "threads=0: must be an integer >= 1"),
    (("eval.batch_size=0",), "eval.batch_size=0: must be an integer >= 1"),
    (("eval.rerank_samples=-1",), "eval.rerank_samples=-1: must be an integer >= 0"),
    (("bc.learning_rate=0",), "bc.learning_rate=0: must be a number > 0"),
    (("bc.num_train_epochs=0",), "bc.num_train_epochs=0: must be a number > 0"),
    (("bc.per_device_train_batch_size=0",), "bc.per_device_train_batch_size=0: must be an integer >= 1"),
    (("bc.early_stopping_patience=0",), "bc.early_stopping_patience=0: must be an integer >= 1"),
    (("bc.early_stopping_patience=true",), "bc.early_stopping_patience=True: must be an integer >= 1"),
    (("algo.num_generations=true",), "algo.num_generations=True: must be an integer >= 2"),
    (("algo.learning_rate=0",), "algo.learning_rate=0: must be a number > 0"),
    (("algo.learning_rate=-1e-4",), "algo.learning_rate=-0.0001: must be a number > 0"),
    (("algo.beta=-1",), "algo.beta must be >= 0, got -1"),
    (("algo.max_steps=0",), "algo.max_steps must be >= 1 (or -1: num_train_epochs decides), got 0"),
    (("algo.max_steps=-5",), "algo.max_steps must be >= 1 (or -1: num_train_epochs decides), got -5"),
    (("algo.max_steps=5.5",), "algo.max_steps=5.5: must be an integer (a whole number, e.g. 6)"),
    (("algo.max_steps=twenty",), "algo.max_steps='twenty': must be an integer (got text)"),
    (("+algo.shuffle_dataset=yes",), "algo.shuffle_dataset='yes': must be true or false (got text)"),
    (("bc.num_train_epochs=two",), "bc.num_train_epochs='two': must be a number > 0"),
    (("algo.num_generations=1",), "algo.num_generations=1: must be an integer >= 2"),
    (("algo.per_device_train_batch_size=6",), "algo / credit / reward.online:"),
    (("algo.temperature=0",), "algo.temperature=0: must be a number > 0"),
    (("algo=ppo", "algo.critic_learning_rate=0"), "algo.critic_learning_rate must be > 0, got 0"),
    (("reward.online.learning_rate=0",), "reward.online.learning_rate must be > 0, got 0"),
    (("reward.online.batch_size=0",), "reward.online.batch_size must be >= 1, got 0"),
    (
        ("reward.online.trainable_layers=3",),
        "reward.online.trainable_layers=3: the reward model has 2 blocks; give 1 to 2",
    ),
    (("reward.online.trainable_layers=0",), "reward.online.trainable_layers must be a number of blocks >= 1"),
    (("model.bf16=yes",), "model.bf16='yes': choose auto, true or false"),
    (("reward.online.update_every=-1",), "reward.online.update_every must be >= 0 (0 freezes the reward model)"),
    (("reward.pretrain.learning_rate=-1",), "reward.pretrain.learning_rate=-1: must be a number > 0"),
    (("reward.prefix_weight=-1",), "reward.prefix_weight=-1: must be a number >= 0"),
    (("arms=[bc,spin]", "spin.rounds=0"), "spin.rounds=0: must be an integer >= 1"),
    (("arms=[bc,spin]", "spin.beta=0"), "spin.beta=0: must be a number > 0"),
    (("arms=[bc,dpo]",), "arms: ['dpo'] unknown"),
    (("arms=[bc,bc]",), "names an arm twice"),
    (("credit=airl",), "credit=airl"),
    (("algo=rloo", "credit=redistribution"), "credit.name='redistribution': TRL's RLOO sums log-probs per sequence"),
    (("algo=rloo_token", "+algo.scale_rewards=group"), "scale_rewards"),
    (("algo=rloo", "peft=lora"), "algo=rloo is TRL's RLOOTrainer, which we run with full models only"),
    (("quant=4bit",), "only adapters can train: add peft=lora"),
    (("shared_base=true",), "shared_base=true puts the critic and the reward as LoRA adapters"),
    (("model=local",), "model.path has no value"),
    (("model=local", "model.path=/no/such/model"), "model.path=/no/such/model: the folder does not exist"),
    (("task.name=jsonl",), "task.name='jsonl' is unknown"),
    (
        ("+task.horizn=3",),
        "unknown config key task.horizn (on the command line: +task.horizn=3): did you mean task.horizon?",
    ),
    (
        ("recipe=toy", "task=dataset", "task.path={data}"),
        "task.horizon (from recipe=toy or a config file) is a key of "
        "task=automaton, not of task=dataset: recipe=toy is written "
        "for task=automaton: leave it out with task=dataset",
    ),
    (
        ("task=dataset", "task.path={data}", "task.horizon=3"),
        "task.horizon (on the command line: task.horizon=3) is a key of task=automaton, not of task=dataset",
    ),
    (("resume_from=checkpoint-2",), "resume_from=checkpoint-2 continues a run: add resume=true"),
    (("resume=true", "resume_from=step-2"), "resume_from='step-2': give checkpoint-N"),
    (("task=dataset",), "task.path has no value"),
    (("task=dataset", "task.path={missing}"), "task.path="),
    (("task=dataset", "task.path={text}"), "task.path="),
    ((*DATA, "task.prompt_column=question"), "task.prompt_column"),
    ((*DATA, "task.verifier=fuzzy"), "task.verifier"),
    ((*DATA, "task.verifier=python:no_such_module:score"), "no_such_module"),
    ((*DATA, "task.heldout_fraction=1.5"), "task.heldout_fraction"),
    (
        (*DATA, "task.heldout_fraction=10%"),
        "task.heldout_fraction='10%': must be a number (a share is written as a fraction: 0.1)",
    ),
    ((*DATA, "task.num_demonstrations=1.5"), "task.num_demonstrations=1.5: must be an integer"),
    (
        ("task=dataset", "task.path={blank}"),
        "task.path={blank}: none of its 1 row(s) has a demonstration in its "
        "'completion' column. trl-irl learns from demonstrations",
    ),
    (("task=dataset", "task.path={empty}"), "task.path={empty} is empty: it holds no rows"),
    (
        ("task=dataset", "task.path={prompts}"),
        "task.path={prompts} holds prompts only (columns ['prompt']). trl-irl learns from demonstrations",
    ),
    ((*DATA, "task.rollout_path={data}"), "rollout prompt(s) are also held-out prompts, which are only evaluated"),
    ((*DATA, "task.rollout_path={missing}"), "task.rollout_path={missing}: no such file or folder"),
    (
        (*DATA, "task.rollout_pool=both"),
        "task.rollout_pool='both' is unknown: choose one of mixed, rollout, demonstrations",
    ),
    ((*DATA, "task.rollout_pool=rollout"), "task.rollout_pool=rollout, but no rollout prompt is left"),
    (
        (*DATA, "task.rollout_path={fresh}", "task.rollout_pool=rollout", "task.verifier=exact"),
        "the oracle arm rolls out on prompts with an answer for the verifier, and "
        "task.rollout_pool=rollout leaves none",
    ),
    (
        (
            *DATA,
            "task.rollout_path={fresh}",
            "task.rollout_pool=rollout",
            "task.num_rollout_prompts=3",
            "arms=[bc,grpo]",
        ),
        "grpo: one generation batch samples 8 distinct prompts (64 completions: algo.per_device_train_batch_size=64 "
        "x 1 step(s) a generation x 1 process(es), in groups of algo.num_generations=8), and the "
        "task.rollout_pool=rollout pool holds 3, so the arm would train 0 steps",
    ),
    (
        ("task=dataset", "task.path={long}"),
        "task.path={long}: 1 of the 13 demonstrations are far longer than the rest (5000 tokens; 99% have at most",
    ),
    ((*DATA, "task.verifier=regex:(\\d+)"), "Hydra's override parser cannot read this value"),
    (
        (*DATA, "task.verifier='regex:#### (\\d+)'"),
        "task.verifier=regex:#### (\\d+) scores 0 of the 13 demonstrations correct (0%), below min_demo_success=0.9",
    ),
    (
        (*DATA, "task.verifier=python:{raises}:score"),
        "raised IndexError: string index out of range on an empty completion ('') of the prompt",
    ),
    ((*DATA, "task.verifier=python:{yes}:score"), "returned 'yes' (str), not a number in [0, 1]"),
    ((*DATA, "task.verifier=exact", "min_demo_success=1.5"), "min_demo_success=1.5: must be a number in [0, 1]"),
    ((*DATA, "arms=[bc,oracle]"), "this task has none: set task.verifier"),
    (("arms=[bc,sdft]", "peft=lora"), "arms: sdft trains full models only (peft=none)"),
    (("arms=[bc,sdft]", "sdft.max_steps=0"), "sdft.max_steps=0: must be an integer >= 1 (null: the algo's)"),
    (("arms=[bc,sdft]", "+sdft.extra.distilation_topk=8"), "distilation_topk"),
    (("peft=lora", "+reward.pretrain.lr_scheduler_type=cosine"), "cannot apply with peft=lora"),
    # the studies' jobs: their recipe is their schema
    (
        ("recipe=prompt_oirl", "+data.datset=svamp"),
        "unknown config key data.datset (on the command line: +data.datset=svamp): did you mean data.dataset?",
    ),
    (("recipe=compounding_error", "+compounding.seed=3"), "did you mean compounding.seeds?"),
]


RUN_ARGS = ("recipe=toy", "arms=[bc]", "bc.num_train_epochs=1")  # the finished run in {run}
# refusals that read the run folder: the folder of a finished run
FOLDER_INPUTS = [
    (
        RUN_ARGS,
        "{run} already holds trained stages ['bc']: `trl-irl resume=true hydra.run.dir={run}` continues that "
        "run (under the config it was started with); for a new run choose another output folder "
        "(hydra.run.dir=...)",
    ),
    (
        ("resume=true", "bc.learning_rate=1e-2"),
        "resume=true: {run} was trained under another config, so reusing it "
        "would mix two runs (bc: bc.learning_rate: 0.003 -> 0.01)",
    ),
]


def files(tmp: Path) -> dict[str, str]:
    words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx", "yz"]
    rows = [{"prompt": f"Reverse {w}: ", "completion": w[::-1]} for w in words]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "data.txt").write_text("not a table\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text(json.dumps({"prompt": "p", "completion": ""}) + "\n")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    (tmp / "fresh.jsonl").write_text("".join(json.dumps({"prompt": f"Reverse {w}{w}: "}) + "\n" for w in words))
    long = [*rows[:6], {"prompt": "Reverse this: ", "completion": "x" * 5000}, *rows[6:12]]
    (tmp / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    (tmp / "bad_input_raises.py").write_text(
        "def score(prompt, completion, row):  # fails on an empty completion\n"
        "    return float(completion.strip()[0] == row['completion'][0])\n"
    )
    (tmp / "bad_input_yes.py").write_text("def score(prompt, completion, row):\n    return 'yes'\n")
    paths = {name: str(tmp / f"{name}.jsonl") for name in ("data", "empty", "blank", "prompts", "fresh", "long")}
    return {
        **paths,
        "missing": str(tmp / "nope.jsonl"),
        "text": str(tmp / "data.txt"),
        "raises": "bad_input_raises",
        "yes": "bad_input_yes",
    }


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    sys.path.insert(0, str(tmp))  # the verifier modules, as from the folder a user runs in
    yield files(tmp)
    sys.path.remove(str(tmp))


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """The folder of a finished run (BC on the toy task)."""
    out = tmp_path_factory.mktemp("used") / "run"
    trl_irl.run(*RUN_ARGS, output_dir=out)
    return out


def python_refusal(overrides, paths: dict, out: Path) -> str:
    """The message ``trl_irl.run`` refuses with."""
    with pytest.raises(trl_irl.Refused) as refused:
        trl_irl.run(*[o.format(**paths) for o in overrides], output_dir=out)
    return str(refused.value)


def cli_refusal(overrides, paths: dict, out: Path, monkeypatch, capsys) -> str:
    """The one line ``trl-irl`` refuses with (exit status 2, before Hydra starts a job)."""

    def hydra_job():
        raise AssertionError("Hydra started the job: the command was not refused before it")

    monkeypatch.setattr(cli, "main", hydra_job)
    monkeypatch.setattr(sys, "argv", ["trl-irl", *[o.format(**paths) for o in overrides], f"hydra.run.dir={out}"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.entry()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("trl-irl: "), lines
    return lines[0].removeprefix("trl-irl: ")


def as_cli(message: str) -> str:
    """A Python refusal in the command line's words: its fixes are the only difference allowed."""
    message = re.sub(
        r"trl_irl\.run\(resume=True, output_dir='([^']*)'\)", r"trl-irl resume=true hydra.run.dir=\1", message
    )
    return message.replace("in trl_irl.run's overrides", "on the command line").replace(
        "output_dir=...", "hydra.run.dir=..."
    )


def digest(folder: Path) -> str:
    """Every file of ``folder`` (names and bytes): what no refusal may change."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def no_model(monkeypatch):
    import trl_irl.pipeline as pipeline

    def setup(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(pipeline, "open_context", setup)  # the first step of a run: the model


@pytest.mark.parametrize("overrides, fragment", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_refused_before_anything_runs_in_one_voice(overrides, fragment, paths, tmp_path, monkeypatch, capsys, no_model):
    out = tmp_path / "run"
    message = cli_refusal(overrides, paths, out, monkeypatch, capsys)
    assert fragment.format(**paths) in message, message
    assert as_cli(python_refusal(overrides, paths, out)) == message
    assert not out.exists()  # nothing written: not even the folder


@pytest.mark.parametrize("overrides, fragment", FOLDER_INPUTS, ids=[" ".join(o) for o, _ in FOLDER_INPUTS])
def test_a_used_folder_refuses_in_one_voice(overrides, fragment, paths, used, monkeypatch, capsys, no_model):
    message = cli_refusal(overrides, paths, used, monkeypatch, capsys)
    assert fragment.format(run=used) in message, message
    python = python_refusal(overrides, paths, used)
    assert as_cli(python) == message
    assert "hydra.run.dir" not in python and "output_dir=" in python  # the fix for where the user is


def test_no_refusal_changes_a_byte_of_a_used_folder(paths, used, tmp_path, monkeypatch, capsys, no_model):
    """Every refusal of the table, aimed at the folder of a finished run, from both doors, and a sweep's check (Hydra's
    --cfg and --help: tests/test_cli.py)."""
    before = digest(used)
    for overrides, _ in BAD_INPUTS + FOLDER_INPUTS:
        cli_refusal(overrides, paths, used, monkeypatch, capsys)
        python_refusal(overrides, paths, used)
    monkeypatch.chdir(tmp_path)
    from trl_irl.sweeps import main as sweep

    (tmp_path / "mine.yaml").write_text(
        f"program: trl-irl\nmethod: grid\nparameters:\n  recipe: {{value: toy}}\n"
        f"  hydra.run.dir: {{value: {used}}}\n  seed: {{values: [0, 1]}}\n"
    )
    assert sweep([str(tmp_path / "mine.yaml"), "--out", str(tmp_path / "s.yaml")]) == 0
    assert digest(used) == before


@pytest.mark.parametrize(
    "overrides",
    [
        (
            "recipe=prompt_oirl",
            "data.dataset=svamp",
            "rm.name=mlp",
            "+rm.candidates.mlp_wide={{kind: mlp, hidden: 256}}",
        ),
        ("recipe=prompt_oirl", "features.query_dims=0", "selection.ks=[1,2]"),
        ("recipe=compounding_error", "compounding.seeds=3", "compounding.rl={{iterations: 10}}"),
        (
            "recipe=compounding_error",
            "compounding.hidden={{realisable: 8, small: 4}}",
            "+compounding.demos={{small: 9}}",
        ),
    ],
)
def test_the_studies_valid_keys_pass_the_schema_check(overrides, paths, tmp_path):
    # the keys pass, so trl_irl.run reaches its own refusal: a study's job runs from the CLI ({{ }}: a literal brace)
    assert "runs from the CLI" in python_refusal(overrides, paths, tmp_path / "run")


def test_a_multirun_checks_every_job_before_the_first_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "main", lambda: pytest.fail("Hydra started the multirun"))
    monkeypatch.setattr(
        sys, "argv", ["trl-irl", "-m", "recipe=toy", "credit=sequence,airl", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    )
    with pytest.raises(SystemExit) as exit_:
        cli.entry()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0] == (
        "trl-irl: the multirun would start 2 jobs and 1 would be refused, so none starts. job 1 "
        "(credit=airl): credit=airl needs a lm reward model, but reward objective 'bt' uses a "
        "classifier: choose reward=airl"
    )
    assert not (tmp_path / "sweep").exists()


def test_a_sweeps_check_gives_the_same_message(paths, tmp_path, monkeypatch):
    from trl_irl.sweeps import main as sweep

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as refused:
        sweep(["algorithms", "algo.lerning_rate=1"])
    assert (
        "would fail: unknown config key algo.lerning_rate (on the command line: algo.lerning_rate=1): did you mean "
        "algo.learning_rate?" in str(refused.value)
    )


def test_the_docs_table_lists_every_bad_input():
    table = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for overrides, _ in BAD_INPUTS + FOLDER_INPUTS:
        assert f"| `{' '.join(overrides)}` |" in table, overrides
    assert len(BAD_INPUTS) >= 60


def markdown() -> str:
    """The table of docs/errors.md: each bad input and the line ``trl-irl`` refuses it with."""
    import contextlib
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sys.path.insert(0, d)
        paths = files(Path(d))
        used = Path(d) / "used"
        with contextlib.redirect_stdout(io.StringIO()):
            trl_irl.run(*RUN_ARGS, output_dir=used)
        lines = ["| `trl-irl ...` | refused with |", "|---|---|"]
        for rows, out in ((BAD_INPUTS, Path(d) / "run"), (FOLDER_INPUTS, used)):
            for overrides, _ in rows:
                err = io.StringIO()
                argv = ["trl-irl", *[o.format(**paths) for o in overrides], f"hydra.run.dir={out}"]
                with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
                    sys.argv = argv
                    cli.entry()
                message = err.getvalue().strip().splitlines()[-1].removeprefix("trl-irl: ")
                for key, path in {**paths, "run": str(used)}.items():
                    message = message.replace(path, "{" + key + "}")
                message = message.replace(os.getcwd(), "<cwd>")
                message = re.sub(r"\s+", " ", message)
                message = message if len(message) <= 400 else message[:397] + "..."
                lines.append(f"| `{' '.join(overrides)}` | {message.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.main = lambda: sys.exit("Hydra started a job: a row of the table was not refused")
    print(markdown())
    sys.exit(0)
