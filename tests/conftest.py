import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

torch.set_num_threads(1)  # two threads on two cores make timings swing tenfold

from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, save_model
from trl_irl.tasks import AutomatonTask


@pytest.fixture(scope="session")
def task():
    return AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=6, seed=3)


@pytest.fixture(scope="session")
def tokenizer(task):
    return build_char_tokenizer(task.alphabet)


@pytest.fixture(scope="session")
def policy_path(task, tokenizer, tmp_path_factory):
    """A tiny policy saved to disk (TRL reloads policies and KL references by path)."""
    model = build_tiny_causal_lm(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=32, seed=0
    )
    return save_model(model, tokenizer, tmp_path_factory.mktemp("policy"))


@pytest.fixture
def demos(task):
    return task.sample_demonstrations(64, seed=1)


@pytest.fixture(scope="session")
def bc_policy_path(task, tokenizer, policy_path, tmp_path_factory):
    """The tiny policy after a little behaviour cloning (plain NLL on demonstrations): valid often, not always."""
    from transformers import AutoModelForCausalLM

    from trl_irl.rewards.objectives import completion_logps, encode

    model = AutoModelForCausalLM.from_pretrained(policy_path)
    demos = task.sample_demonstrations(256, seed=5)
    batch = encode(tokenizer, [d["prompt"] for d in demos], [d["completion"] for d in demos])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(25):
        loss = -completion_logps(model, batch).sum() / batch["completion_mask"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_model(model, tokenizer, tmp_path_factory.mktemp("bc_policy"))
