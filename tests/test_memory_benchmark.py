"""benchmarks/memory.py: its CPU memory probe reads a known allocation, and each setup is what it claims to be."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("memory_benchmark", ROOT / "benchmarks" / "memory.py")
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
def test_peak_probe_reads_a_known_allocation():
    memory.reset_peak()
    before = psutil.Process().memory_info().rss
    block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    del block
    grown = (memory.peak_bytes() - before) / 2**20
    assert 190 < grown < 230, grown
    memory.reset_peak()  # the peak drops back once the block is freed
    assert (memory.peak_bytes() - before) / 2**20 < 100


def lora_parameters(shape: dict, r: int) -> int:
    """LoRA on every linear layer of a Qwen2 block (not the LM head): r * (in + out) per layer, by hand."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_block = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
    return shape["num_hidden_layers"] * sum(r * (a + b) for a, b in per_block)


def test_quick_run_rows_and_setups(tmp_path):
    out = tmp_path / "memory.json"
    memory.main(["--quick", "--models", "random-tiny", "--workdir", str(tmp_path / "models"), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["setup"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(memory.SETUPS)
    for r in rows.values():
        assert set(r) >= {"model", "setup", "peak_mem_mb", "tokens_per_s"}
        assert r["peak_mem_mb"] > 0 and r["tokens_per_s"] > 0 and not r["oom"]
        assert r["peak_vs_policy_only"] == pytest.approx(
            r["peak_mem_mb"] / rows["policy_only"]["peak_mem_mb"], abs=0.01
        )
    # the policy trains LoRA alone in both 4-bit setups (the roles' adapters are frozen outside their scope), and
    # every weight of its own full model in the separate setup
    shape = memory.QWEN["random-tiny"]
    lora = lora_parameters(shape, memory.LORA["r"])
    assert rows["policy_only"]["policy_trainable_parameters"] == lora
    assert rows["shared_base"]["policy_trainable_parameters"] == lora
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with biases; o without
    full = shape["vocab_size"] * h + h + layers * (attention + 3 * h * i + 2 * h)  # tied embeddings, norms
    assert rows["separate"]["policy_trainable_parameters"] == full
    assert result["goals"]["random-tiny"].keys() == {"shared_base_le_1.3x", "separate_ge_4x"}
    assert result["complete"] is True


def test_a_run_cut_off_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """A GPU lease ends at a time limit: every finished setup is in --out before the next one starts."""

    def child(args, env=None):
        if args[0] == "--prepare":
            return {"path": str(tmp_path)}
        if args[2] == "shared_base":
            raise TimeoutError("the lease ended")
        return {
            "model": args[1],
            "setup": args[2],
            "layers": 2,
            "peak_mem_mb": 100.0,
            "tokens_per_s": 1.0,
            "oom": False,
        }

    monkeypatch.setattr(memory, "child", child)
    out = tmp_path / "memory.json"
    with pytest.raises(TimeoutError):
        memory.main(["--models", "random-tiny", "--setups", "policy_only,separate,shared_base", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["setup"] for r in result["rows"]] == ["policy_only", "separate"] and result["complete"] is False
    assert result["rows"][1]["peak_vs_policy_only"] == 1.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps is Linux's")
def test_own_weights_unmaps_the_weights_file_and_keeps_ties(policy_path):
    """Weights loaded in their file's dtype view the mapped file, whose pages would count in the CPU peak."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    weights = str(Path(policy_path) / "model.safetensors")
    mapped = lambda: weights in Path("/proc/self/maps").read_text()  # noqa: E731
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    gc.collect()
    assert mapped()  # the premise: a float32 file loaded as float32 is viewed, not copied
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    memory.own_weights()
    assert not mapped()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight


def test_a_7b_step_extrapolated_from_shallow_models(tmp_path, monkeypatch):
    """--layers builds the 7B shape at each depth, and the full-depth peak is read off the line through them."""
    per_layer, fixed = {"policy_only": 300.0, "shared_base": 420.0}, {"policy_only": 3000.0, "shared_base": 3500.0}
    prepared, flags = [], set()

    def child(args, env=None):
        if args[0] == "--prepare":
            prepared.append(int(args[3]))
            return {"path": str(tmp_path / args[2])}
        flags.update(args[4:])
        layers = int(Path(args[3]).name.split("-")[-2])  # the folder made for that depth: qwen2.5-7b-<n>-layers
        return {
            "model": args[1],
            "setup": args[2],
            "layers": layers,
            "oom": False,
            "tokens_per_s": 1.0,
            "peak_mem_mb": fixed[args[2]] + per_layer[args[2]] * layers + (5.0 if layers == 2 else 0.0),
        }

    monkeypatch.setattr(memory, "child", child)
    out = tmp_path / "memory.json"
    memory.main(
        [
            "--models",
            "qwen2.5-7b",
            "--layers",
            "1,2,4",
            "--setups",
            "policy_only,shared_base",
            "--generation-batch",
            "8",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert prepared == [1, 2, 4]
    # the micro-batch and reward pairs of recipe=qlora/ppo_7b (recipes/qlora/parts/size_7b.yaml)
    size = yaml.safe_load((ROOT / "recipes" / "qlora" / "parts" / "size_7b.yaml").read_text())
    assert {
        f"--batch={size['algo']['per_device_train_batch_size']}",
        f"--reward-batch={size['reward']['online']['batch_size']}",
        "--generation-batch=8",
    } <= flags
    assert {r["generation_batch"] for r in result["rows"]} == {8}
    fits = {f["setup"]: f for f in result["extrapolated"]}
    # least squares through (1, y1), (2, y2 + 5), (4, y4) by hand: x mean 7/3, Sxx = 14/3, the +5 moves
    # the slope by 5 * (2 - 7/3) / (14/3) = -5/14 and the mean by 5/3
    for setup in fits:
        slope = per_layer[setup] - 5 / 14
        intercept = fixed[setup] + per_layer[setup] * 7 / 3 + 5 / 3 - slope * 7 / 3
        assert fits[setup]["mb_per_layer"] == pytest.approx(slope, abs=0.1)
        assert fits[setup]["peak_mem_mb"] == pytest.approx(intercept + 28 * slope, abs=0.1)
        assert fits[setup]["max_residual_mb"] == pytest.approx(5 - (5 / 3 - 5 / 14 * (2 - 7 / 3)), abs=0.1)  # at x = 2
    # 3500 + 420 * 28 = 15260 MB: within 20 GB, from the extrapolated peak (no 28-layer row was measured); both
    # lines read 5/3 - 5/14 * (28 - 7/3) = -7.5 MB off their true value at 28 layers
    assert result["goals"]["qwen2.5-7b"] == {
        "shared_base_step_le_20gb_extrapolated": True,
        "shared_base_le_1.3x_extrapolated": False,
    }
    assert fits["shared_base"]["peak_vs_policy_only"] == pytest.approx(
        (15260 - 7.5) / (3000 + 300 * 28 - 7.5), abs=0.005
    )
    assert result["goals"]["qwen2.5-7b/4-layers"]["shared_base_le_1.3x"] is True


def test_runs_of_different_setups_combined_into_one(tmp_path, capsys):
    """--combine: a 7B depth takes an hour on CPU, so policy_only and shared_base come from separate runs."""
    settings = {
        "prompt_len": 512,
        "completion_len": 512,
        "batch": 2,
        "reward_batch_pairs": 2,
        "steps": 1,
        "compute_dtype": "float32",
        "device": "cpu",
        "cpu_malloc": "live",
    }

    def run_file(name, setup, peaks, **changed):
        rows = [
            {
                "model": "qwen2.5-7b",
                "setup": setup,
                "layers": n,
                "peak_mem_mb": mb,
                "oom": False,
                "tokens_per_s": 1.0,
                **settings,
                **changed,
            }
            for n, mb in peaks.items()
        ]
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    policy = run_file("policy.json", "policy_only", {1: 5000.0, 2: 5100.0})  # 100 MB per layer: 7700 MB at 28
    shared = run_file("shared.json", "shared_base", {1: 5500.0, 2: 5700.0, 3: 5900.0})  # 200 MB: 10900 MB at 28
    out = tmp_path / "both.json"
    result = memory.main(["--combine", policy, shared, "--out", str(out)])
    assert json.loads(out.read_text())["goals"] == result["goals"]
    assert {r["layers"]: r.get("peak_vs_policy_only") for r in result["rows"] if r["setup"] == "shared_base"} == {
        1: 1.1,
        2: round(5700 / 5100, 2),
        3: None,
    }  # no policy_only row at 3 layers
    fits = {f["setup"]: f for f in result["extrapolated"]}
    assert (fits["policy_only"]["peak_mem_mb"], fits["shared_base"]["peak_mem_mb"]) == (7700.0, 10900.0)
    assert fits["shared_base"]["peak_vs_policy_only"] == round(10900 / 7700, 2)
    assert result["goals"]["qwen2.5-7b"] == {
        "shared_base_step_le_20gb_extrapolated": True,
        "shared_base_le_1.3x_extrapolated": False,
    }  # 1.42x
    assert "1.42x policy_only's" in capsys.readouterr().out
    # refused: other flags (the generation batch), or a row measured twice
    other = run_file("other.json", "shared_base", {4: 6100.0}, generation_batch=8)
    with pytest.raises(SystemExit):
        memory.main(["--combine", policy, other])
    assert "generation_batch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        memory.main(["--combine", shared, shared])
    assert "keep one of them" in capsys.readouterr().err


def test_layers_refused_for_models_with_real_weights():
    with pytest.raises(SystemExit):
        memory.main(["--models", "tiny", "--layers", "1,2"])
    with pytest.raises(SystemExit):
        memory.main(["--models", "qwen2.5-7b", "--layers", "one,two"])
    with pytest.raises(SystemExit):  # the 7B recipe's micro-batch is 2: a generation batch of 3 cannot be split
        memory.main(["--models", "qwen2.5-7b", "--generation-batch", "3"])
