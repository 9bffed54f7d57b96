"""Every bad input of the table in docs/errors.md is refused before any model loads or stage runs, with the message the table
shows. ``python tests/test_bad_inputs.py`` prints the table (run it after changing a message).

Each row runs ``trl_irl.run`` in process: it composes the config as the CLI does and stops at the check, so the
whole table takes seconds. ``{data}`` is a small valid JSONL, ``{missing}`` a path that does not exist,
``{text}`` a file of an unknown format, ``{empty}`` a JSONL with one row whose completion is empty.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

import trl_irl

DATA = ("task=dataset", "task.path={data}")
BAD_INPUTS = [
    # (overrides, a fragment of the error)
    (("+sead=3",), "unknown config key sead (on the command line: +sead=3): did you mean seed?"),
    (("+taks.horizon=3",), "unknown config key taks"),
    (("+eval.batchsize=3",), "unknown config key eval.batchsize (on the command line: +eval.batchsize=3): did you mean eval.batch_size?"),
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
    (("bc.learning_rate=0",), "bc.learning_rate=0: must be a number > 0"),
    (("bc.num_train_epochs=0",), "bc.num_train_epochs=0: must be a number > 0"),
    (("bc.per_device_train_batch_size=0",), "bc.per_device_train_batch_size=0: must be an integer >= 1"),
    (("bc.early_stopping_patience=0",), "bc.early_stopping_patience=0: must be an integer >= 1"),
    (("algo.learning_rate=0",), "algo.learning_rate=0: must be a number > 0"),
    (("algo.learning_rate=-1e-4",), "algo.learning_rate=-0.0001: must be a number > 0"),
    (("algo.beta=-1",), "algo.beta must be >= 0, got -1"),
    (("algo.max_steps=0",), "algo.max_steps must be >= 1 (or -1: num_train_epochs decides), got 0"),
    (("algo.max_steps=-5",), "algo.max_steps must be >= 1 (or -1: num_train_epochs decides), got -5"),
    (("algo.num_generations=1",), "algo.num_generations=1: must be an integer >= 2"),
    (("algo.per_device_train_batch_size=6",), "algo / credit / reward.online:"),
    (("algo.temperature=0",), "algo.temperature=0: must be a number > 0"),
    (("algo=ppo", "algo.critic_learning_rate=0"), "algo.critic_learning_rate=0: must be a number > 0"),
    (("reward.online.learning_rate=0",), "reward.online.learning_rate must be > 0, got 0"),
    (("reward.online.batch_size=0",), "reward.online.batch_size must be >= 1, got 0"),
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
    (("quant=4bit",), "only adapters can train: add peft=lora"),
    (("shared_base=true",), "shared_base=true puts the critic and the reward as LoRA adapters"),
    (("model=local",), "model.path has no value"),
    (("model=local", "model.path=/no/such/model"), "model.path=/no/such/model: the folder does not exist"),
    (("task.name=jsonl",), "task.name='jsonl' is unknown"),
    (("+task.horizn=3",), "unknown config key task.horizn (on the command line: +task.horizn=3): did you mean task.horizon?"),
    (("recipe=toy", "task=dataset", "task.path={data}"), "unknown config key task.horizon (from recipe=toy or a config file)"),
    (("resume_from=checkpoint-2",), "resume_from=checkpoint-2 continues a run: add resume=true"),
    (("resume=true", "resume_from=step-2"), "resume_from='step-2': give checkpoint-N"),
    (("task=dataset",), "task.path has no value"),
    (("task=dataset", "task.path={missing}"), "task.path="),
    (("task=dataset", "task.path={text}"), "task.path="),
    ((*DATA, "task.prompt_column=question"), "task.prompt_column"),
    ((*DATA, "task.verifier=fuzzy"), "task.verifier"),
    ((*DATA, "task.verifier=python:no_such_module:score"), "no_such_module"),
    ((*DATA, "task.heldout_fraction=1.5"), "task.heldout_fraction"),
    (("task=dataset", "task.path={empty}"), "task."),
    ((*DATA, "arms=[bc,oracle]"), "this task has none: set task.verifier"),
    (("peft=lora", "+reward.pretrain.lr_scheduler_type=cosine"), "cannot apply with peft=lora"),
    # the studies' jobs: their recipe is their schema
    (("recipe=prompt_oirl", "+data.datset=svamp"), "unknown config key data.datset (on the command line: +data.datset=svamp): did you mean data.dataset?"),
    (("recipe=compounding_error", "+compounding.seed=3"), "did you mean compounding.seeds?"),
]


def files(tmp: Path) -> dict[str, str]:
    rows = [{"prompt": f"Reverse {w}: ", "completion": w[::-1]} for w in ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op",
                                                                         "qr", "st", "uv", "wx"]]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "data.txt").write_text("not a table\n")
    (tmp / "empty.jsonl").write_text(json.dumps({"prompt": "p", "completion": ""}) + "\n")
    return {"data": str(tmp / "data.jsonl"), "missing": str(tmp / "nope.jsonl"), "text": str(tmp / "data.txt"),
            "empty": str(tmp / "empty.jsonl")}


def refusal(overrides, paths: dict, out: Path) -> str:
    """The error ``trl_irl.run`` stops with (its first line)."""
    try:
        trl_irl.run(*[o.format(**paths) for o in overrides], output_dir=out)
    except Exception as error:  # noqa: BLE001 - the message is what is checked
        return str(error)
    return ""


@pytest.mark.parametrize("overrides, fragment", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_refused_before_anything_runs(overrides, fragment, tmp_path, monkeypatch):
    import trl_irl.pipeline as pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(pipeline.Pipeline, "setup", no_model)  # the first stage: tokenizer and model
    message = refusal(overrides, files(tmp_path), tmp_path / "run")
    assert fragment.format(**files(tmp_path)) in message, message
    assert not (tmp_path / "run" / "bc").exists()


@pytest.mark.parametrize("overrides", [
    ("recipe=prompt_oirl", "data.dataset=svamp", "rm.name=mlp", "+rm.candidates.mlp_wide={{kind: mlp, hidden: 256}}"),
    ("recipe=prompt_oirl", "features.query_dims=0", "selection.ks=[1,2]"),
    ("recipe=compounding_error", "compounding.seeds=3", "compounding.rl={{iterations: 10}}"),
    ("recipe=compounding_error", "compounding.hidden={{realisable: 8, small: 4}}", "+compounding.demos={{small: 9}}"),
])
def test_the_studies_valid_keys_pass_the_schema_check(overrides, tmp_path):
    # the check passes, so trl_irl.run reaches its own refusal: a study's job runs from the CLI ({{ }}: a literal brace)
    assert "runs from the CLI" in refusal(overrides, {}, tmp_path / "run")


def test_the_docs_table_lists_every_bad_input():
    table = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for overrides, _ in BAD_INPUTS:
        assert f"| `{' '.join(overrides)}` |" in table, overrides
    assert len(BAD_INPUTS) >= 40


def markdown() -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths = files(Path(d))
        lines = ["| `trl-irl ...` | refused with |", "|---|---|"]
        for overrides, _ in BAD_INPUTS:
            message = refusal(overrides, paths, Path(d) / "run").splitlines()[0]
            for key, path in paths.items():
                message = message.replace(path, "{" + key + "}")
            message = message.replace(os.getcwd(), "<cwd>")
            message = re.sub(r"\s+", " ", message)
            message = message if len(message) <= 150 else message[:147] + "..."
            lines.append(f"| `{' '.join(overrides)}` | {message.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
    sys.exit(0)
