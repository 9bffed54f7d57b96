"""The README's Python examples run as written, on CPU, in a folder holding what they name: a user's file
(``my.jsonl``) and a BC model folder (``my_bc_policy``: the tiny model with a tokenizer built from the file)."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, save_model
    from trl_irl.tasks import DatasetTask

    rows = []
    for i in range(48):
        words = [w + str(i % 10) for w in ("cat", "dog", "owl", "elk")[: 2 + i % 3]]
        rows.append({"prompt": f"Reverse this list of words: {', '.join(words)}\n",
                     "completion": ", ".join(reversed(words))})
    (tmp_path / "my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = build_char_tokenizer(DatasetTask(str(tmp_path / "my.jsonl")).alphabet)
    model = build_tiny_causal_lm(tokenizer, 32, 1, 2, 64, max_positions=128, seed=0)
    save_model(model, tokenizer, tmp_path / "my_bc_policy")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 4  # trl_irl.run, OnlineIRLTrainer, PPOTrainer, SharedBase
    namespace: dict = {}
    for block in blocks:  # in order, in one namespace, as a user pasting them one after another
        exec(compile(block, str(README), "exec"), namespace)
    metrics = json.loads(Path(namespace["metrics_path"]).read_text())
    assert list(metrics["arms"]) == ["bc", "grpo", "oracle"]
    assert (tmp_path / "out" / "checkpoint-10").exists() and (tmp_path / "out_shared" / "checkpoint-2").exists()
