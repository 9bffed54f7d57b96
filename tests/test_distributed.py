"""Two CPU processes (gloo): the online reward updates stay identical across ranks and equal a single-process
update on the average of both ranks' losses; PPO on a shared 4-bit base stays in sync under DDP and DeepSpeed ZeRO-2,
which agree with each other."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from distributed_reward_update import build, rank_data, save_policy

from trl_irl.rewards.objectives import encode


def reference_update(workdir):
    """The same 3 steps in one process: gradient of the mean of the two ranks' losses (same buffer indices)."""
    save_policy(workdir)
    task, updater = build(workdir)
    data = [list(zip(*rank_data(task, rank))) for rank in (0, 1)]
    model, params = updater.model, updater.params
    model.train()
    for _ in range(updater.steps):
        idx = torch.randint(len(data[0]), (updater.batch_size,), generator=updater.generator).tolist()
        updater.optimizer.zero_grad()
        for rank in (0, 1):
            prompts, demos, samples = zip(*[data[rank][i] for i in idx])
            batch = encode(updater.tokenizer, list(prompts) * 2, list(demos) + list(samples))
            loss, _ = updater.objective.pair_loss(model, batch)
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, updater.max_grad_norm)
        updater.optimizer.step()
    return model.state_dict(), build(workdir)[1].model.state_dict()


def test_two_process_reward_update_is_synchronised(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    script = Path(__file__).parent / "distributed_reward_update.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561"]
    result = subprocess.run(
        [*torchrun, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # identical across ranks

    expected, initial = reference_update(tmp_path / "reference")
    assert not torch.allclose(rank0["score.weight"], initial["score.weight"])  # it did learn
    for k in rank0:
        torch.testing.assert_close(rank0[k], expected[k], atol=1e-5, rtol=1e-4)


DDP = ["--multi_gpu"]
ZERO2 = ["--use_deepspeed", "--zero_stage", "2"]  # DeepSpeed on CPU: its CPU accelerator, gloo


def launch(script_args, tmp_path, port, backend=DDP):
    """Two CPU processes (gloo) under `accelerate launch`, as a user would start them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *backend,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *script_args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


ROLES = ("default", "reward", "critic")


def role_names(weights, role):
    return [k for k in weights if f".{role}." in k or k == f"{role}.score"]


def shared_base_run(tmp_path, port, backend):
    """Both ranks' adapter and head weights, before and after two PPO steps (``distributed_shared_base.py``)."""
    script = Path(__file__).parent / "distributed_shared_base.py"
    result = launch([str(script), str(tmp_path)], tmp_path, port, backend)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return shared_base_run(tmp_path_factory.mktemp("ddp"), 29562, DDP)


def assert_in_sync_and_learnt(rank0, rank1):
    assert rank0["seen"] != rank1["seen"]  # different data on the two ranks
    for role in ROLES:
        names = role_names(rank0["after"], role)
        assert names, role
        for k in names:
            torch.testing.assert_close(rank0["after"][k], rank1["after"][k], atol=0, rtol=0)  # in sync
        assert any(not torch.equal(rank0["after"][k], rank0["before"][k]) for k in names), f"{role} did not learn"


def test_two_process_ppo_on_a_shared_base_stays_in_sync(ddp_run):
    """Policy (DDP), critic (step pre-hook) and reward (updater) adapters on one 4-bit base end identical on both
    ranks, though each rank learnt from its own samples, and each moved."""
    assert_in_sync_and_learnt(*ddp_run)


def test_deepspeed_zero2_on_a_shared_base_matches_ddp(tmp_path, ddp_run):
    """The same two PPO steps under DeepSpeed ZeRO-2 (the critic's group and value head inside the engine, the
    reward adapter outside it): in sync across ranks, and every role's update equals DDP's (same samples; DeepSpeed's
    flat fp32 buffers differ from DDP's in rounding only)."""
    zero = shared_base_run(tmp_path, 29564, ZERO2)
    assert_in_sync_and_learnt(*zero)
    assert zero[0]["seen"] == ddp_run[0]["seen"]
    for role in ROLES:
        names = role_names(zero[0]["after"], role)
        update = {
            name: torch.cat([(run[0]["after"][k] - run[0]["before"][k]).flatten() for k in names])
            for name, run in (("zero", zero), ("ddp", ddp_run))
        }
        relative = (update["zero"] - update["ddp"]).norm() / update["ddp"].norm()
        assert relative < 0.01, (role, relative.item())


@pytest.mark.parametrize("backend,port", [(DDP, 29563), (ZERO2, 29565)], ids=["ddp", "deepspeed_zero2"])
def test_pipeline_runs_under_accelerate_launch(tmp_path, backend, port):
    """The shared-base PPO recipe, end to end, in two processes: one metrics.json, written once."""
    run = tmp_path / "run"
    result = launch(
        [
            "-m",
            "trl_irl.cli",
            "recipe=toy",
            "peft=lora",
            "quant=4bit",
            "shared_base=true",
            "algo=ppo",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
        port,
        backend,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["arms"]) == ["bc", "bc@T*", "ppo", "oracle"]
    for arm in ("ppo", "oracle"):
        assert (run / arm / "merged" / "model.safetensors").exists()
    assert result.stdout.strip().splitlines()[-1] == str(run / "metrics.json")
