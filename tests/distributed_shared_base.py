"""Run by test_distributed.py under `accelerate launch --cpu --num_processes 2`: two PPO steps with policy, critic and
an online reward on one 4-bit base, each rank on its own prompts (DDP shards the data); each rank then writes every
adapter's and head's weights, before and after training."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from accelerate import PartialState  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, save_model  # noqa: E402
from trl_irl.shared_base import CRITIC, REWARD, SharedBase  # noqa: E402
from trl_irl.tasks import AutomatonTask  # noqa: E402
from trl_irl.trainers import PPOConfig, PPOTrainer  # noqa: E402

QUANT = {"mode": "4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def weights(shared: SharedBase) -> dict[str, torch.Tensor]:
    """Every adapter's LoRA weights (by name) and the role heads."""
    out = {n: p.detach().clone() for n, p in shared.model.named_parameters() if "lora_" in n}
    out |= {f"{name}.score": role.score.weight.detach().clone() for name, role in shared.roles.items()}
    return out


def main(workdir: Path):
    state = PartialState(cpu=True)  # gloo: the same state TrainingArguments(use_cpu=True) takes
    task = AutomatonTask(n_states=4, n_tokens=6, n_allowed=3, horizon=6, seed=3)
    tokenizer = build_char_tokenizer(task.alphabet)
    if state.is_main_process:
        save_model(build_tiny_causal_lm(tokenizer, 64, 2, 4, 128, 32, seed=0), tokenizer, workdir / "policy")
    state.wait_for_everyone()

    torch.manual_seed(0)  # fresh adapters and heads: identical on every rank (DDP broadcasts only the policy's)
    shared = SharedBase(str(workdir / "policy"), LORA, QUANT, roles=(REWARD, CRITIC))
    reward, critic = shared.role(REWARD, "classifier"), shared.role(CRITIC, "token")
    before = weights(shared)
    demos = task.sample_demonstrations(64, seed=1)
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    args = PPOConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=task.horizon,
        max_steps=2,
        learning_rate=1e-2,
        critic_learning_rate=1e-2,
        reward_learning_rate=1e-2,
        beta=0.05,
        reward_update_every=1,
        reward_update_steps=1,
        reward_batch_size=8,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        # SGD: an update is the gradient itself, so DDP and DeepSpeed can be compared (Adam's first
        # steps are nearly sign(g)); no clipping: DeepSpeed clips all groups at once, DDP each apart
        optim="sgd",
        max_grad_norm=1e9,
        critic_max_grad_norm=1e9,
    )
    trainer = PPOTrainer(
        model=shared.model,
        reward_model=reward,
        critic=critic,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    # the (demonstration, sample) pairs this rank learnt from: they must differ between ranks, or the test proves
    # nothing
    seen = sorted({(demo, sample) for _, demo, sample, _ in trainer.reward_updater.buffer.items})
    torch.save({"before": before, "after": weights(shared), "seen": seen}, workdir / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
