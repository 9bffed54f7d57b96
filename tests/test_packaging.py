"""The library stands apart from its studies: ``trl_irl`` (trainers, pipeline, the CLI's main job) imports and runs
without the Prompt-OIRL extra (LightGBM, scikit-learn, sentence-transformers), and ``recipe=prompt_oirl`` without it
names the install line before any work."""

import subprocess
import sys
import textwrap

import pytest

# a fresh interpreter where the extra's modules cannot be imported (sys.modules[name] = None blocks an import)
BLOCK = textwrap.dedent("""
    import sys
    for name in ("lightgbm", "sklearn", "sentence_transformers"):
        sys.modules[name] = None
""")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "WANDB_MODE": "disabled"},
    )


def test_the_library_imports_without_the_prompt_oirl_extra():
    result = run_python("""
        import trl_irl, trl_irl.cli, trl_irl.pipeline, trl_irl.trainers, trl_irl.compounding.experiment
        from trl_irl import OnlineRewardGRPOTrainer, PPOTrainer, run
        print("imported")
    """)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


def test_recipe_prompt_oirl_without_the_extra_names_the_install_line(tmp_path):
    result = run_python(
        """
        sys.argv = ["trl-irl", *sys.argv[1:]]
        from trl_irl.cli import main
        main()
    """,
        "recipe=prompt_oirl",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert "recipe=prompt_oirl needs ['lightgbm', 'scikit-learn', 'sentence-transformers']" in result.stderr
    assert 'pip install "trl-irl[prompt-oirl]"' in result.stderr


def test_the_study_extras_are_not_core_requirements():
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    core = cfg["options"]["install_requires"]
    for package in ("lightgbm", "scikit-learn", "sentence-transformers"):
        assert package not in core and package in cfg["options.extras_require"]["prompt-oirl"]


def test_the_prompt_oirl_logs_ship_whole_with_their_licences():
    """recipe=prompt_oirl reads logs the package ships (no path of one machine): each file matches its checksum,
    the licences are beside them, and setup.cfg puts the folder in the package."""
    import configparser
    import hashlib
    from pathlib import Path

    import trl_irl

    folder = Path(trl_irl.__file__).resolve().parent / "data" / "prompt_oirl"
    entries = [line.split() for line in (folder / "MANIFEST.sha256").read_text().splitlines() if line.strip()]
    assert len(entries) >= 10
    for digest, name in entries:
        assert hashlib.sha256((folder / name.lstrip("*")).read_bytes()).hexdigest() == digest, name
    names = {p.name for p in folder.iterdir()}
    assert {"LICENSE_Prompt-OIRL.txt", "LICENSE_grade-school-math.txt", "LICENSE_SVAMP.txt", "README.md"} <= names
    cfg = configparser.ConfigParser()
    cfg.read(folder.parents[2] / "setup.cfg")
    assert "data/prompt_oirl/*" in cfg["options.package_data"]["trl_irl"]


def test_an_installed_wheel_finds_its_configs_recipes_and_data_from_any_folder(tmp_path):
    """Not only an editable install: the wheel holds conf/ (groups and recipes) and the shipped data, and the
    installed package composes a recipe and prints its help from a folder far from the clone."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(root), "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp_path / "wheel").glob("trl_irl-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = textwrap.dedent("""
        import sys
        import trl_irl, trl_irl.cli, trl_irl.config
        from hydra import compose, initialize_config_dir
        assert trl_irl.__file__.startswith(sys.argv[1]), trl_irl.__file__  # the installed copy, not the clone
        with initialize_config_dir(config_dir=str(trl_irl.config.CONF_DIR), version_base="1.3"):
            toy = compose("config", overrides=["recipe=toy", "output_dir=x"])
            oirl = compose("config", overrides=["recipe=prompt_oirl", "output_dir=x"])
        from pathlib import Path
        print(toy.job, toy.task.name, Path(oirl.data.dir, "labels_llama2_gsm8k.npz").exists())
        print(len(trl_irl.cli.recipes()), "recipes")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(tmp_path / "site"),
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "pipeline automaton True"
    assert int(result.stdout.splitlines()[1].split()[0]) >= 20


@pytest.mark.parametrize(
    "base, link",
    [
        (
            "Qwen/Qwen2.5-0.5B-Instruct",
            "[Qwen/Qwen2.5-0.5B-Instruct](https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct)",
        ),
        ("{folder}", "`{folder}`"),  # a local folder: named, not linked to the hub, not in the card's metadata
    ],
)
def test_model_cards_name_the_base_model(base, link, tmp_path):
    """TRL's card for a model loaded from a folder reads "fine-tuned version of [None]"; ours names the base."""
    from huggingface_hub import ModelCard
    from trl.trainer.utils import generate_model_card

    from trl_irl.models import name_base_model

    base, link = base.format(folder=tmp_path), link.format(folder=tmp_path)
    card = generate_model_card(
        base_model=None,
        model_name="grpo",
        hub_model_id=None,
        dataset_name=None,
        tags=["trl"],
        wandb_url=None,
        trackio_url=None,
        trainer_name="GRPO",
    )
    card.save(tmp_path / "README.md")
    assert "fine-tuned version of [None](https://huggingface.co/None)" in (tmp_path / "README.md").read_text()
    assert name_base_model(tmp_path / "README.md", base)
    card = ModelCard.load(tmp_path / "README.md")
    assert f"fine-tuned version of {link}." in card.text and "None" not in card.text.split("\n\n")[1]
    assert card.data.base_model == (base if "/" in base and not base.startswith("/") else None)
    assert not name_base_model(tmp_path / "README.md", "other/name")  # named once; a card naming its base is kept
    assert not name_base_model(tmp_path / "missing.md", base)
