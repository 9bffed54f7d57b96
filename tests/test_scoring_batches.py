"""The reward model and the critic score a generation batch a micro-batch at a time, as TRL scores its log-probs:
the same numbers as one forward over the whole batch, with never more rows in a forward than the micro-batch."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import ALGORITHMS
from trl_irl.batching import by_rows
from trl_irl.models import load_reward_model
from trl_irl.rewards import make_objective
from trl_irl.trainers.ppo import PPOTrainer, build_critic
from trl_irl.trainers.token_rewards import token_rewards


class RowCounter:
    """Rows of every forward of ``model`` that runs without gradients (scoring, not the learning updates)."""

    def __init__(self, model):
        self.rows = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if not torch.is_grad_enabled():
            self.rows.append((args[0] if args else kwargs["input_ids"]).size(0))


def randomised(model, seed=0):
    """Non-trivial scores: a fresh reward head is small, a fresh critic head zero, an AIRL q a copy of the policy."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


def trl_batch(tokenizer, prompts, completions):
    """A batch as TRL's generation hands it over: left-padded prompts, right-padded completions."""
    enc = [tokenizer(list(x), add_special_tokens=False)["input_ids"] for x in (prompts, completions)]
    P, T = (max(map(len, ids)) for ids in enc)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (P - len(p)) + p for p in enc[0]])
    completion_ids = torch.tensor([c + [pad] * (T - len(c)) for c in enc[1]])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": (torch.arange(P) >= P - torch.tensor([len(p) for p in enc[0]])[:, None]).long(),
        "completion_ids": completion_ids,
        "completion_mask": (torch.arange(T) < torch.tensor([len(c) for c in enc[1]])[:, None]).long(),
    }


PROMPTS = ["A", "BC", "D", "A", "CB", "B", "DA"]
COMPLETIONS = ["abc", "a", "fedcba", "bb", "cafe", "e", "dcba"]


def test_by_rows_equals_one_call_and_never_passes_more_rows():
    batch = {"x": torch.arange(14.0).view(7, 2), "y": torch.arange(7)}
    seen = []

    def fn(b):
        seen.append(len(b["y"]))
        return b["x"] * 2, b["y"] + b["x"][:, 0].long()

    whole = fn(batch)
    seen.clear()
    chunked = by_rows(fn, batch, 3)
    assert seen == [3, 3, 1]
    assert all(torch.equal(a, b) for a, b in zip(chunked, whole))
    assert torch.equal(by_rows(lambda b: b["x"].sum(-1), batch, 2), batch["x"].sum(-1))
    with pytest.raises(ValueError, match="scoring batch size"):
        by_rows(fn, batch, 0)


@pytest.mark.parametrize("objective", ["bt", "gail", "airl"])
def test_rewards_in_chunks_equal_one_call(objective, policy_path, tokenizer):
    kind = "lm" if objective == "airl" else "classifier"
    model = randomised(load_reward_model(policy_path, kind))
    policy = load_reward_model(policy_path, "lm").eval() if objective == "airl" else None
    counter = RowCounter(model)
    obj = make_objective(objective)
    whole = obj.rewards(model, tokenizer, PROMPTS, COMPLETIONS, policy)
    assert counter.rows == [7]
    counter.rows.clear()
    chunked = obj.rewards(model, tokenizer, PROMPTS, COMPLETIONS, policy, batch_size=3)
    assert counter.rows == [3, 3, 1]
    assert whole.abs().min() > 1e-3  # non-trivial rewards: the comparison can fail
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "credit,objective", [("redistribution", "bt"), ("attention", "gail"), ("implicit", "airl"), ("airl", "airl")]
)
def test_token_credit_in_chunks_equals_one_call(credit, objective, policy_path, tokenizer):
    model = randomised(load_reward_model(policy_path, "lm" if objective == "airl" else "classifier"))
    if credit == "attention":
        model.set_attn_implementation("eager")
    counter = RowCounter(model)
    output = trl_batch(tokenizer, PROMPTS, COMPLETIONS)
    torch.manual_seed(1)
    B, T = output["completion_ids"].shape
    kwargs = dict(
        scale=0.7,
        shift=0.1,
        policy_logps=-torch.rand(B, T),
        ref_logps=-torch.rand(B, T),
        args=SimpleNamespace(attention_mix=0.5, implicit_beta=1.0),
    )
    sequence_rewards = torch.randn(B)

    def updater(scoring_batch_size):
        return SimpleNamespace(model=model, objective=make_objective(objective), scoring_batch_size=scoring_batch_size)

    whole = token_rewards(credit, output, sequence_rewards, updater=updater(None), **kwargs)
    counter.rows.clear()
    chunked = token_rewards(credit, output, sequence_rewards, updater=updater(2), **kwargs)
    assert counter.rows == [2, 2, 2, 1]
    # the dense part, not just the sequence reward on the last token, must be non-trivial
    assert (whole * output["completion_mask"])[:, :-1].abs().max() > 1e-3
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_ppo_values_in_chunks_equal_one_call(policy_path, tokenizer):
    from transformers import AutoModelForCausalLM

    critic = randomised(build_critic(AutoModelForCausalLM.from_pretrained(policy_path)))
    counter = RowCounter(critic)
    output = trl_batch(tokenizer, PROMPTS, COMPLETIONS)
    with torch.no_grad():
        whole = PPOTrainer.values(None, critic, output)
        counter.rows.clear()
        chunked = PPOTrainer.values(None, critic, output, batch_size=4)
    assert counter.rows == [4, 3]
    assert (
        whole[output["completion_mask"].bool()].abs().min() > 1e-4
        and (whole[output["completion_mask"] == 0] == 0).all()
    )
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_ppo_scores_its_generation_batch_a_micro_batch_at_a_time(tmp_path, task, tokenizer, policy_path, demos):
    """4 completions per micro-batch, 2 micro-batches per generation: the reward model (sequence reward and prefix
    scores) and the critic never see the 8 rows of the generation batch in one forward."""
    args = tiny_rl_config(
        ALGORITHMS["ppo"].config_cls,
        tmp_path / "ppo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        seed=0,
        reward_batch_size=2,
        credit="redistribution",
    )
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    trainer = ALGORITHMS["ppo"].trainer_cls(
        model=policy_path,
        reward_model=load_reward_model(policy_path, "classifier"),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    reward_rows, critic_rows = RowCounter(trainer.reward_updater.model), RowCounter(trainer.critic)
    trainer.train()
    # 2 generation batches of 8 rows: the sequence rewards, the prefix scores and the critic's values, 4 rows each time
    assert reward_rows.rows == [4] * 8 and critic_rows.rows == [4] * 4
