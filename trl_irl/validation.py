"""Checks that stop bad input before any expensive work, each naming the problem and the fix."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import re
import shlex
import types
import typing
from collections.abc import Callable


class Refused(ValueError):
    """Bad input, refused before any model loaded or any stage ran, and before anything was written; the message
    names the config path and the fix. ``trl-irl`` prints it as one line (``HYDRA_FULL_ERROR=1`` adds the traceback);
    ``trl_irl.run`` raises it with the same message."""


# which front door the user came in by: "cli" (trl-irl) or "python" (trl_irl.run); a message's fix is written for it
DOOR = contextvars.ContextVar("trl_irl_door", default="cli")


@contextlib.contextmanager
def door(name: str):
    """Inside: messages give the fixes of front door ``name`` (``"cli"`` or ``"python"``)."""
    token = DOOR.set(name)
    try:
        yield
    finally:
        DOOR.reset(token)


def folder_option() -> str:
    """How the user names a run's folder where they are: ``hydra.run.dir=...`` on the command line, ``output_dir=...``
    in Python."""
    return "output_dir=..." if DOOR.get() == "python" else "hydra.run.dir=..."


def given_where() -> str:
    """Where the user wrote an override: on the command line, or in ``trl_irl.run``'s arguments."""
    return "in trl_irl.run's overrides" if DOOR.get() == "python" else "on the command line"


def resume_command(folder) -> str:
    """The exact command that continues the run in ``folder``, for the front door the user is at."""
    if DOOR.get() == "python":
        return f"trl_irl.run(resume=True, output_dir={str(folder)!r})"
    return f"trl-irl resume=true {shell_word('hydra.run.dir=' + override_value(str(folder)))}"


def shell_word(text: str) -> str:
    """``text`` as one word of a shell command line, quoted only where it must be (in double quotes where they do)."""
    if text == shlex.quote(text):
        return text
    return f'"{text}"' if not set('"$`\\!') & set(text) else shlex.quote(text)


def override_value(text: str) -> str:
    """``text`` as the value of a Hydra override: as it is where Hydra's grammar reads it so, else quoted (Hydra reads
    ``( ) [ ] { } , = '`` and spaces as syntax)."""

    if re.fullmatch(r"[\w./~:+@%-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.contextmanager
def refusing(*also: type[Exception]):
    """Inside: the checks of a job's config and files; a ValueError or FileNotFoundError they raise (and any of
    ``also``) is a ``Refused`` (nothing ran yet)."""
    try:
        yield
    except Refused:
        raise
    except (ValueError, FileNotFoundError, *also) as error:  # FileNotFoundError: a task.path that is not there
        raise Refused(str(error)) from error


def check_dataset(dataset, required: list[str], name: str):
    """``dataset`` must be non-empty and have the ``required`` columns, of text (None allowed: a missing value)."""
    if dataset is None:
        raise ValueError(f"{name} is missing: pass a datasets.Dataset with columns {required}")
    columns = list(getattr(dataset, "column_names", None) or [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(
            f"{name} lacks the column(s) {missing} (it has {columns}); add them, e.g. "
            f"dataset.rename_column('<yours>', '{missing[0]}')"
        )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: it needs at least one row with columns {required}")
    for column in required:  # the first value given: a row may lack a demonstration (a rollout prompt)
        first = next((v for v in dataset[column] if v is not None), "")
        if not isinstance(first, str):
            raise ValueError(
                f"{name}['{column}'] must hold plain text (str); got {type(first).__name__}. "
                "The trainers take plain text: render chat messages with tokenizer.apply_chat_template "
                "first (the trl-irl job's task=dataset does this for you)"
            )


def check_tokenizer(tokenizer, name: str = "processing_class", eos_token_ids=()):
    """Reward models pool the last non-pad token, so padding must be its own token, distinct from every EOS id
    (``tokenizer.eos_token_id`` and ``eos_token_ids``, e.g. the generation config's)."""
    if tokenizer is None:
        raise ValueError(f"{name} is missing: pass the tokenizer of the model")
    if tokenizer.eos_token is None:
        raise ValueError(f"{name} has no eos token: set tokenizer.eos_token; completions are scored with EOS appended")
    fix = (
        "trl_irl.models.use_distinct_pad(tokenizer) reuses a spare special token (no resize); or "
        "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings"
    )
    if tokenizer.pad_token is None:
        raise ValueError(
            f"{name} has no pad token: {fix} (reusing EOS as pad makes a reward model score the wrong token)"
        )
    eos = eos_ids(tokenizer, eos_token_ids)
    if tokenizer.pad_token_id in eos:
        raise ValueError(
            f"{name} pads with {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}), one of its EOS ids "
            f"{sorted(eos)}: a reward classifier would score the token before the EOS that ends each "
            f"scored completion instead of the EOS. Give it a distinct pad: {fix}"
        )


def id_list(ids) -> list[int]:
    """A config's ``eos_token_id`` (None, one id or several) as a list."""
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def eos_ids(tokenizer, extra=()) -> set[int]:
    """Every EOS id: the tokenizer's and ``extra`` (e.g. a generation config's)."""
    return {tokenizer.eos_token_id, *extra} - {None}


def generation_eos_ids(model) -> list[int]:
    """The EOS ids a model's generation config stops at (one id or several), [] when unknown (a path)."""
    return id_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def check_pad_id(model, tokenizer, name: str = "reward_model"):
    """A transformers sequence classifier pools at the last token that is not ``config.pad_token_id``: it must be the
    tokenizer's pad id. Unset, it is set (as TRL's RewardTrainer does); different, it is refused."""
    if reward_model_kind(model) != "classifier" or getattr(model, "kind", None) == "classifier":
        return  # a shared base's AdapterRole pools by the attention mask
    config = model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    elif config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"{name}.config.pad_token_id is {config.pad_token_id} but its tokenizer pads with id "
            f"{tokenizer.pad_token_id}: it would pool at the wrong token. Set "
            f"{name}.config.pad_token_id = tokenizer.pad_token_id (trl_irl.models.load_reward_model(path, "
            "'classifier', tokenizer.pad_token_id) does)"
        )


# --- the job's config: every key known, every value in range, before anything runs ------------------------------
# sections whose keys are checked against a dataclass (the trainer configs, the task's factory): not the schema's
OPEN_SECTIONS = (
    "algo",
    "credit",
    "reward.pretrain",
    "reward.online",
    "bc.extra",
    "spin.extra",
    "sdft.extra",
    "task",
    "hydra",
)
# the studies' jobs: their schema is their recipe; these sections hold names or fields checked by the job itself
JOB_OPEN_SECTIONS = {
    "prompt_oirl": ("rm.candidates", "hydra"),
    "compounding_error": ("compounding.rl", "compounding.hidden", "compounding.demos", "hydra"),
}


def _paths(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _paths(item, path)


def check_unknown_keys(cfg: dict, schema: dict, source=lambda path: "", open_sections=OPEN_SECTIONS):
    """Every key of ``cfg`` must be in ``schema`` (the same config groups without recipe or overrides), except
    inside ``open_sections``. The error names the key as written, where it came from (``source(path)``) and the
    nearest valid key."""

    known = set(_paths(schema))
    for path in _paths(cfg):
        if path in known or any(path == s or path.startswith(s + ".") for s in open_sections):
            continue
        parent = path.rpartition(".")[0]
        if parent and parent not in known:
            continue  # reported at its parent
        siblings = sorted(p for p in known if p.rpartition(".")[0] == parent)
        near = difflib.get_close_matches(path, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
            path.rpartition(".")[2], [p.rpartition(".")[2] for p in known], n=1, cutoff=0.7
        )
        hint = f"did you mean {near[0]}? " if near else ""
        raise ValueError(
            f"unknown config key {path}{source(path)}: {hint}valid keys "
            f"{'under ' + parent if parent else 'at the top level'}: "
            f"{[p.rpartition('.')[2] for p in siblings]}. Fix the spelling or remove it"
        )


def lookup(cfg: dict, path: str, default=None):
    """The value at the dotted ``path`` of a nested dict, or ``default`` where the path is absent."""
    value = cfg
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def nest(flat: dict) -> dict:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``: dotted keys as the nested dict they name."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer_at_least(low: int, note: str = "") -> tuple[str, Callable]:
    """The rule "an integer >= low" (true and false are not integers here), and its test."""
    return f"an integer >= {low}{note}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def number_above(low: float) -> tuple[str, Callable]:
    """The rule "a number > low", and its test."""
    return f"a number > {low:g}", lambda v: _number(v) and v > low


def number_at_least(low: float) -> tuple[str, Callable]:
    """The rule "a number >= low", and its test."""
    return f"a number >= {low:g}", lambda v: _number(v) and v >= low


# (config path, the rule, a test of the value); a path absent from the config is skipped. The rules of our trainer
# configs' own fields (reward.online.*, algo.beta, algo.max_steps) are theirs, stated once in their __post_init__.
TRAINED_SECTIONS = ("bc", "spin", "sdft", "algo", "reward.pretrain")
RANGES = [
    ("seed", "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    ("threads", *integer_at_least(1)),
    ("eval.batch_size", *integer_at_least(1)),
    ("eval.rerank_samples", *integer_at_least(0)),
    ("eval.num_samples", *integer_at_least(1)),
    (
        "eval.temperatures",
        "a list of numbers >= 0 ([] for no bc@T* arm)",
        lambda v: isinstance(v, (list, tuple)) and all(_number(t) and t >= 0 for t in v),
    ),
    ("min_demo_success", "a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    *[(f"{s}.learning_rate", *number_above(0)) for s in TRAINED_SECTIONS],
    *[(f"sdft.{k}", *integer_at_least(1, " (null: the algo's)")) for k in ("max_steps", "num_generations")],
    *[(f"{s}.per_device_train_batch_size", *integer_at_least(1)) for s in TRAINED_SECTIONS],
    *[(f"{s}.num_train_epochs", *number_above(0)) for s in ("bc", "spin", "reward.pretrain")],
    ("bc.early_stopping_patience", *integer_at_least(1)),
    ("spin.rounds", *integer_at_least(1)),
    ("spin.beta", *number_above(0)),
    ("algo.num_generations", *integer_at_least(2, " (a group to compare)")),
    ("algo.temperature", *number_above(0)),
    ("algo.save_steps", *number_above(0)),
    ("reward.prefix_weight", *number_at_least(0)),
    *[(f"model.{k}", *integer_at_least(1)) for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")],
]


def number_kind(annotation) -> str | None:
    """What a field annotated ``annotation`` must hold when it is a number or a switch: ``"an integer"``, ``"a
    number"`` or ``"true or false"`` (``None`` allowed beside it where the annotation says so); None for anything
    else (text, containers, unions with text: their own checks read them)."""

    args = (
        set(typing.get_args(annotation))
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else {annotation}
    )
    args.discard(type(None))
    if args == {bool}:
        return "true or false"
    if args == {int}:
        return "an integer"
    if args in ({float}, {int, float}):
        return "a number"
    return None


def type_problem(value, kind: str) -> str | None:
    """Why ``value`` is not ``kind`` (``number_kind``'s words), with the fix where one is plain; None when it is."""
    if value is None:
        return None  # a field's own default or check decides what None means
    if kind == "true or false":
        return None if isinstance(value, bool) else f"got {'text' if isinstance(value, str) else type(value).__name__}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return f"a share is written as a fraction: {float(value.strip()[:-1]) / 100:g}"
            except ValueError:
                pass
        return f"got {'text' if isinstance(value, str) else type(value).__name__}"
    if kind == "an integer" and not isinstance(value, int):
        return f"a whole number, e.g. {round(value)}" if value != round(value) else f"write {round(value)}"
    return None


def check_types(values: dict, hints: dict, path_of) -> None:
    """Every value whose field is a number or a switch (``hints``: the fields' annotations) holds one; the error names
    the config path the user wrote (``path_of(name)``), the value, what it must be and the fix."""
    for name, value in values.items():
        kind = number_kind(hints[name]) if name in hints else None
        problem = None if kind is None else type_problem(value, kind)
        if problem is not None:
            raise ValueError(f"{path_of(name)}={value!r}: must be {kind} ({problem})")


def check_ranges(cfg: dict):
    """Each value of ``RANGES`` in range; the error names the config path, the value and the rule."""
    for path, rule, ok in RANGES:
        value = lookup(cfg, path)
        if value is not None and not ok(value):
            raise ValueError(f"{path}={value!r}: must be {rule}")


def reward_model_kind(model) -> str | None:
    """``"classifier"`` (one score per sequence), ``"lm"`` (a causal LM's logits) or None (unknown: not checked)."""
    kind = getattr(model, "kind", None)  # a shared base's AdapterRole says what it is
    if kind in ("classifier", "lm", "token"):
        return kind
    name = type(getattr(model, "get_base_model", lambda: model)()).__name__
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith("ForCausalLM"):
        return "lm"
    return None


def check_reward_model_kind(model, objective, name: str = "reward_model"):
    """The reward model must be what ``objective`` scores with: BT and GAIL a sequence classifier, AIRL a causal LM."""
    kind = reward_model_kind(model)
    if kind is not None and kind != objective.model_kind:
        want = (
            "a sequence classifier (AutoModelForSequenceClassification, num_labels=1)"
            if objective.model_kind == "classifier"
            else "a causal LM (AutoModelForCausalLM)"
        )
        raise ValueError(
            f"{name} is a {type(model).__name__} ({kind}), but objective={objective.name!r} scores with "
            f"{want}: build it with trl_irl.models.load_reward_model(path, {objective.model_kind!r}), or "
            "choose the objective that matches it"
        )


def check_reference_source(model, beta: float):
    """With ``beta > 0`` TRL loads the KL reference from the policy's path (``config._name_or_path``), not from the
    weights passed: an in-memory full model would be pulled towards whatever that path holds. A path, or a PEFT model
    (its reference is the base with the adapter off), is right."""
    if beta and not isinstance(model, str) and not hasattr(model, "peft_config"):
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or "(no path)"
        raise ValueError(
            f"model is an in-memory {type(model).__name__} and beta={beta} > 0: TRL would load the KL "
            f"reference from {source!r}, not from the weights you passed. Save the model and pass its "
            "folder (model='path/to/folder'), or set beta=0"
        )
