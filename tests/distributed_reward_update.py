"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: one online reward update with rank-specific
samples; each rank writes its reward model's parameters."""

import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)

from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, save_model  # noqa: E402
from trl_irl.rewards import OnlineRewardUpdater, make_objective  # noqa: E402
from trl_irl.tasks import AutomatonTask  # noqa: E402


def save_policy(workdir):
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=6, seed=3)
    tokenizer = build_char_tokenizer(task.alphabet)
    save_model(build_tiny_causal_lm(tokenizer, 32, 1, 2, 64, 32, seed=0), tokenizer, f"{workdir}/policy")


def build(workdir):
    from trl_irl.models import load_reward_model

    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=6, seed=3)
    tokenizer = build_char_tokenizer(task.alphabet)
    path = f"{workdir}/policy"

    torch.manual_seed(0)  # the score head's initialisation: identical on every rank
    model = load_reward_model(path, "classifier")
    updater = OnlineRewardUpdater(
        model,
        tokenizer,
        make_objective("bt"),
        learning_rate=1e-2,
        weight_decay=0.0,
        batch_size=8,
        steps=3,
        buffer_size=64,
        max_grad_norm=1.0,
        seed=0,
    )
    return task, updater


def rank_data(task, rank):
    """Demonstrations and stand-in 'samples' that differ between ranks, as real policy samples do."""
    demos = task.sample_demonstrations(16, seed=10 + rank)
    samples = [d["completion"][::-1] for d in task.sample_demonstrations(16, seed=20 + rank)]
    return [d["prompt"] for d in demos], [d["completion"] for d in demos], samples


if __name__ == "__main__":
    workdir = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:  # transformers writes checkpoints from the main process only
        save_policy(workdir)
    dist.barrier()
    task, updater = build(workdir)
    updater.add(*rank_data(task, rank))
    updater.update()
    torch.save({k: v.detach() for k, v in updater.model.state_dict().items()}, f"{workdir}/rank{rank}.pt")
    dist.barrier()  # both ranks done before either tears gloo down (one fresh-clone run aborted in teardown)
    dist.destroy_process_group()
