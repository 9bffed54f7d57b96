"""The README and the user guide say what the code does: their examples run as written, on CPU, in a folder holding
what they name (a user's file ``my.jsonl`` and a BC model folder ``my_bc_policy``: the tiny model with a tokenizer
built from the file); the support matrix is what the start-up checks accept; the recipe table lists every recipe;
every relative link leads to a file."""

import itertools
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"


def blocks(path: Path, language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text if text is not None else path.read_text(), flags=re.S)


def section(path: Path, heading: str) -> str:
    """The text of ``## heading`` up to the next ``## ``."""
    text = path.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, save_model
    from trl_irl.tasks import DatasetTask

    rows = []
    for i in range(48):
        words = [w + str(i % 10) for w in ("cat", "dog", "owl", "elk")[: 2 + i % 3]]
        rows.append(
            {"prompt": f"Reverse this list of words: {', '.join(words)}\n", "completion": ", ".join(reversed(words))}
        )
    (tmp_path / "my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = build_char_tokenizer(DatasetTask(str(tmp_path / "my.jsonl")).alphabet)
    model = build_tiny_causal_lm(tokenizer, 32, 1, 2, 64, max_positions=128, seed=0)
    save_model(model, tokenizer, tmp_path / "my_bc_policy")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_python_blocks(path: Path, text: str | None = None) -> dict:
    namespace: dict = {}
    for block in blocks(path, "python", text):  # in order, in one namespace, as a user pasting them one after another
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_the_readme_quickstart_runs_as_written_from_python(user_folder):
    namespace = run_python_blocks(README, section(README, "Quickstart: your own data"))
    metrics = json.loads(namespace["metrics"].path.read_text())
    assert metrics == namespace["metrics"]  # what trl_irl.run returns is metrics.json
    assert list(metrics["arms"]) == ["bc", "bc@T*", "grpo", "oracle"]
    assert metrics["config"]["algo"]["max_steps"] == 20


def test_the_readme_quickstart_runs_as_written_from_the_cli(user_folder):
    from test_cli import ENV, TRL_IRL

    commands = [
        line.split("#")[0].strip()
        for block in blocks(README, "bash", section(README, "Quickstart: your own data"))
        for line in block.splitlines()
        if line.startswith("trl-irl ")
    ]
    assert commands, "the quickstart shows no trl-irl command"
    for command in commands:
        args = shlex.split(command)[1:]
        result = subprocess.run([TRL_IRL, *args], env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        metrics_path = Path(result.stdout.strip().splitlines()[-1])  # the last line, as the README says
        metrics = json.loads(metrics_path.read_text())
        assert metrics_path.resolve().is_relative_to(user_folder.resolve()) and list(metrics["arms"]) == [
            "bc",
            "bc@T*",
            "grpo",
            "oracle",
        ]
        assert "success_rate" in metrics["arms"]["oracle"]


def test_the_guide_python_examples_run_as_written(user_folder):
    run_python_blocks(GUIDE)  # OnlineRewardGRPOTrainer, PPOTrainer, SharedBase: each trains and saves
    assert (user_folder / "out" / "checkpoint-10").exists() and (user_folder / "out_shared" / "checkpoint-2").exists()
    assert len(blocks(GUIDE, "python")) >= 3


def readme_matrix() -> dict[tuple[str, str], set[str]]:
    """{(algo, credit): objectives} from the README's support matrix."""
    text = section(README, "What works with what").splitlines()
    header = next(line for line in text if "\\ `algo=`" in line)
    lines = [line for line in text if line.startswith("| `") and line != header]
    algos = re.findall(r"`(\w+)`", header.split("|", 2)[2])
    matrix = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        credit = re.match(r"`(\w+)`", cells[0]).group(1)
        for algo, cell in zip(algos, cells[1:]):
            matrix[algo, credit] = set() if cell == "—" else {o.strip() for o in cell.split(",")}
    return matrix


def test_the_support_matrix_is_what_the_start_up_checks_accept(tmp_path):
    from trl_irl.config import check
    from trl_irl.rewards.objectives import OBJECTIVES
    from trl_irl.trainers import ALGORITHMS, CREDITS

    def built_in(registry, code):  # the library's own entries, not the examples' plugins other tests registered
        return [name for name, entry in registry.items() if code(entry).__module__.startswith("trl_irl.")]

    algos, credits = built_in(ALGORITHMS, lambda e: e.trainer_cls), built_in(CREDITS, lambda e: e.rewards)
    accepted = {}
    for algo, credit, objective in itertools.product(algos, credits, built_in(OBJECTIVES, lambda e: e)):
        try:
            check(f"algo={algo}", f"credit={credit}", f"reward={objective}", output_dir=tmp_path)
        except ValueError:
            continue
        accepted.setdefault((algo, credit), set()).add(objective)
    documented = readme_matrix()
    assert set(documented) == set(itertools.product(algos, credits))
    for key, objectives in documented.items():
        assert accepted.get(key, set()) == objectives, key


def expand(name: str) -> list[str]:
    """``qlora/ppo_{0.5b,1.5b,7b}`` -> three names."""
    match = re.search(r"\{([^}]*)\}", name)
    return (
        [name]
        if not match
        else [n for v in match.group(1).split(",") for n in expand(name.replace(match.group(0), v, 1))]
    )


def test_the_recipe_table_lists_every_recipe():
    from trl_irl.cli import recipes

    listed = set()
    for line in section(README, "Recipes").splitlines():
        if line.startswith("| `"):
            for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
                listed.update(expand(name))
    assert listed == set(recipes())


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if not re.match(r"[a-z]+:", target):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
