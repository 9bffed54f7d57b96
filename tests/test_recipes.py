"""Every recipe composes and passes the pipeline's checks (no model is loaded), and the qlora recipes configure
what their names promise."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trl_irl.cli import CONF_DIR, DATA_DIR, config_dict

RECIPES = sorted(str(p.relative_to(CONF_DIR / "recipe").with_suffix("")) for p in (CONF_DIR / "recipe").rglob("*.yaml")
                 if "parts" not in p.parts and "sweeps" not in p.parts)


def composed(recipe: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={recipe}", "output_dir=/tmp/unused", *overrides])
    return config_dict(cfg)


def test_the_recipes_are_found():
    assert {"default", "toy", "smollm2_word_reversal", "qlora/ppo_7b", "qlora/online_irl_0.5b"} <= set(RECIPES)
    assert len([r for r in RECIPES if r.startswith("qlora/")]) == 12


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "prompt_oirl"])
def test_each_pipeline_recipe_passes_the_checks(recipe, tmp_path):
    from trl_irl.pipeline import Pipeline

    yours = [f"model.path={tmp_path}", f"task.path={DATA_DIR / 'word_reversal.jsonl'}"]  # a folder that exists
    cfg = composed(recipe, *(yours if recipe.startswith("qlora/") else []))
    Pipeline(cfg)  # raises on any inconsistent or misspelt setting (and reads the task's file)


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


@pytest.mark.parametrize("sweep", sorted((Path(CONF_DIR) / "recipe" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweeps_call_trl_irl_with_hydra_overrides(sweep):
    """A wandb agent runs ``trl-irl key=value ...``: every parameter, at every listed value, must compose."""
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    assert spec["program"] == "trl-irl"
    assert spec["command"] == ["${env}", "${program}", "${args_no_hyphens}"]
    params = spec["parameters"]
    fixed = [f"{k}={v['value']}" for k, v in params.items() if "value" in v and k != "recipe"]
    for key, values in params.items():
        choices = values.get("values") or [values.get("value", values.get("min"))]
        for choice in choices:
            overrides = [o for o in fixed if not o.startswith(f"{key}=")] + ([] if key == "recipe" else [f"{key}={choice}"])
            cfg = composed(params["recipe"]["value"], *overrides)
            assert cfg is not None
    assert spec["metric"]["name"].startswith("policy/")


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
