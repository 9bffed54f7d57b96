"""Padding must be its own token: a reward classifier scores the last token that is not the pad id, so a tokenizer
that pads with EOS (SmolLM2's does) makes it score the token before EOS. The trainers refuse such a tokenizer, the
CLI gives it a distinct pad, and every classifier the run loads pools where the tokenizer pads."""

import copy
import json

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
from trl_irl.models import build_char_tokenizer, load_reward_model, save_model, use_distinct_pad
from trl_irl.plan import load_tokenizer
from trl_irl.rewards import make_objective
from trl_irl.rewards.objectives import tokenize_completions
from trl_irl.trainers import IRLRewardConfig, IRLRewardTrainer


def padding_with_eos(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def score_at(model, ids: list[int], position: int) -> float:
    """The classifier's head at one position of one unpadded row: the reference, computed without its pooling."""
    hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state
    return model.score(hidden)[0, position, 0].item()


@pytest.fixture
def classifier(policy_path):
    model = load_reward_model(policy_path, "classifier").eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight)  # scores that differ from token to token
    return model


def test_padding_with_eos_scores_the_token_before_eos_and_a_distinct_pad_scores_the_eos(classifier, tokenizer):
    prompts, completions = ["A", "B"], ["abc", "a"]
    rows = tokenize_completions(tokenizer, prompts, completions)
    eos_scores = [score_at(classifier, ids, len(ids) - 1) for ids, _ in rows]
    before_eos = [score_at(classifier, ids, len(ids) - 2) for ids, _ in rows]
    assert all(abs(a - b) > 1e-3 for a, b in zip(eos_scores, before_eos))  # the two readings are distinguishable

    got = make_objective("bt").rewards(classifier, tokenizer, prompts, completions)  # distinct pad (the fixture's)
    assert got.tolist() == pytest.approx(eos_scores, abs=1e-5)

    eos_pad = padding_with_eos(tokenizer)
    classifier.config.pad_token_id = eos_pad.pad_token_id
    got = make_objective("bt").rewards(classifier, eos_pad, prompts, completions)  # the defect, as it was
    assert got.tolist() == pytest.approx(before_eos, abs=1e-5)


def test_use_distinct_pad_reuses_a_spare_special_token_and_leaves_a_distinct_pad_alone(tokenizer):
    assert use_distinct_pad(copy.deepcopy(tokenizer)) is None  # <pad> already differs from <eos>
    smollm2_like = padding_with_eos(tokenizer)  # SmolLM2: pad = eos = <|im_end|>, unk = <|endoftext|>
    assert use_distinct_pad(smollm2_like) == "<unk>"
    assert smollm2_like.pad_token_id == smollm2_like.convert_tokens_to_ids("<unk>") != smollm2_like.eos_token_id
    # the unknown token is one of the generation config's EOS ids: the next spare special token is taken
    other = padding_with_eos(tokenizer)
    assert use_distinct_pad(other, [other.convert_tokens_to_ids("<unk>")]) == "<pad>"


def test_use_distinct_pad_without_a_spare_token_names_the_fix():
    bare = build_char_tokenizer(["a", "b"])
    bare.pad_token = bare.eos_token
    with pytest.raises(ValueError, match="no other special token.*add_special_tokens.*resize_token_embeddings"):
        use_distinct_pad(bare, [bare.convert_tokens_to_ids("<unk>"), bare.convert_tokens_to_ids("<pad>")])


def online_args(tmp_path):
    return tiny_rl_config(
        OnlineRewardGRPOConfig, tmp_path / "run", per_device_train_batch_size=4, max_completion_length=4, max_steps=1
    )


def test_the_trainers_refuse_a_tokenizer_that_pads_with_eos(tmp_path, policy_path, tokenizer, demos, classifier):
    data = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    with pytest.raises(ValueError, match="processing_class pads with '<eos>'.*use_distinct_pad"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "never_loaded"),
            reward_model=classifier,
            args=online_args(tmp_path),
            train_dataset=data,
            processing_class=padding_with_eos(tokenizer),
        )
    pairs = Dataset.from_list([{"prompt": d["prompt"], "chosen": d["completion"], "rejected": "a"} for d in demos])
    with pytest.raises(ValueError, match="processing_class pads with '<eos>'"):
        IRLRewardTrainer(
            model=classifier,
            args=IRLRewardConfig(output_dir=str(tmp_path / "rm"), report_to="none"),
            train_dataset=pairs,
            processing_class=padding_with_eos(tokenizer),
        )


def test_a_pad_among_the_generation_configs_eos_ids_is_refused(tmp_path, policy_path, tokenizer, demos, classifier):
    from trl_irl.models import load_causal_lm

    policy = load_causal_lm(policy_path)
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    data = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    with pytest.raises(ValueError, match=r"one of its EOS ids \[0, 1\]"):
        OnlineRewardGRPOTrainer(
            model=policy,
            reward_model=classifier,
            args=online_args(tmp_path),
            train_dataset=data,
            processing_class=tokenizer,
        )


def test_a_classifier_pooling_at_another_id_is_refused_and_an_unset_one_is_set(tmp_path, tokenizer, demos, classifier):
    data = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    classifier.config.pad_token_id = tokenizer.eos_token_id
    with pytest.raises(ValueError, match="reward_model.config.pad_token_id is 1 but its tokenizer pads with id 0"):
        OnlineRewardGRPOTrainer(
            model=str(tmp_path / "never_loaded"),
            reward_model=classifier,
            args=online_args(tmp_path),
            train_dataset=data,
            processing_class=tokenizer,
        )
    classifier.config.pad_token_id = None
    from trl_irl.validation import check_pad_id

    check_pad_id(classifier, tokenizer)
    assert classifier.config.pad_token_id == tokenizer.pad_token_id


def test_the_cli_gives_a_model_folder_that_pads_with_eos_a_distinct_pad(tmp_path, policy_path, tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "user_model"
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    save_model(model, padding_with_eos(tokenizer), folder)  # a user's folder: pad = EOS in tokenizer and config
    assert json.loads((folder / "config.json").read_text())["pad_token_id"] == tokenizer.eos_token_id
    path, loaded, note = load_tokenizer({"path": str(folder)})
    assert loaded.pad_token == "<unk>" and "padding with '<unk>'" in note  # the run prints it
    # every classifier the run loads pools at that id, and the run's saved folders keep it
    assert load_reward_model(path, "classifier", loaded.pad_token_id).config.pad_token_id == loaded.pad_token_id
    save_model(model, loaded, tmp_path / "bc_final")
    assert json.loads((tmp_path / "bc_final" / "config.json").read_text())["pad_token_id"] == loaded.pad_token_id
    _, again, note = load_tokenizer({"path": str(tmp_path / "bc_final")})
    assert again.pad_token == "<unk>" and note is None
