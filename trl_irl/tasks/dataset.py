"""``task=dataset``: your prompts and demonstrations from a file, checked before any model loads.

``task.path`` is a JSONL / JSON / CSV / Parquet file, a folder written by ``datasets.save_to_disk``, or a hub id
(where there is network). Each row has a prompt and a demonstration (``task.prompt_column``,
``task.completion_column``), as plain strings or chat messages (``[{"role": ..., "content": ...}]``, rendered with
the tokenizer's chat template), and optionally an answer for the verifier (``task.answer_column``).

Rows are split three ways, by distinct prompt so that no held-out prompt is trained on: held-out rows
(``task.split_column``, or a ``task.heldout_fraction`` of the prompts) are only evaluated; a
``task.validation_fraction`` of the training prompts early-stops BC and scores reward pretraining.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import numpy as np

from .base import Task, TaskData
from .verifiers import make_verifier

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SAVE_TO_DISK_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def read_table(path: str, key: str = "task.path") -> dict[str | None, list[dict]]:
    """The file's rows, by split when the source has splits (a ``DatasetDict`` folder or hub dataset), else
    under ``None``. Errors name the config key ``key`` (``task.path``, ``task.rollout_path``) and say what to fix."""
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_dir():
            if not any((p / name).exists() for name in SAVE_TO_DISK_FILES):
                raise ValueError(
                    f"{key}={path} is a folder, but not one written by datasets.save_to_disk (no "
                    f"{' / '.join(SAVE_TO_DISK_FILES)}): give a file ({', '.join(FORMATS)}) or such a folder"
                )
            loaded = datasets.load_from_disk(str(p))
        elif p.exists():
            if p.suffix.lower() not in FORMATS:
                raise ValueError(
                    f"{key}={path}: unknown format {p.suffix or '(no suffix)'!r}; use one of "
                    f"{', '.join(FORMATS)}, or a folder written by datasets.save_to_disk"
                )
            if p.suffix.lower() != ".parquet" and not p.read_bytes().strip():
                raise ValueError(empty(path, key))
            try:
                loaded = datasets.load_dataset(FORMATS[p.suffix.lower()], data_files=str(p), split="train")
            except ValueError as error:  # datasets' words for a file with no row (a CSV header alone)
                if "corresponds to no data" in str(error):
                    raise ValueError(empty(path, key)) from None
                raise
        elif p.suffix.lower() in FORMATS or path.startswith(("/", ".", "~")) or path.count("/") != 1:
            raise FileNotFoundError(
                f"{key}={path}: no such file or folder (relative paths are read from the "
                f"folder you run in, {Path.cwd()})"
            )
        else:  # owner/name: a hub dataset
            try:
                loaded = datasets.load_dataset(path)
            except Exception as error:
                raise ValueError(
                    f"{key}={path}: no such local file or folder, and loading it as a hub dataset "
                    f"failed ({type(error).__name__}: {str(error)[:200]})"
                ) from None
    except (ValueError, FileNotFoundError):
        raise
    except Exception as error:  # a malformed file: say which and why, not pyarrow's traceback
        raise ValueError(
            f"{key}={path} could not be read as {p.suffix or 'a dataset'} "
            f"({type(error).__name__}: {str(error)[:300]}); JSONL needs one JSON object per line"
        ) from None
    splits = (
        {name: split.to_list() for name, split in loaded.items()}
        if isinstance(loaded, (datasets.DatasetDict, dict))
        else {None: loaded.to_list()}
    )
    if not any(splits.values()):
        raise ValueError(empty(path, key))
    return splits


def empty(path: str, key: str = "task.path") -> str:
    if key != "task.path":
        return (
            f"{key}={path} is empty: it holds no rows. Each row needs a prompt "
            '(JSONL: {"prompt": "..."} on every line)'
        )
    return (
        f"task.path={path} is empty: it holds no rows. Each row needs a prompt and its demonstration "
        '(JSONL: {"prompt": "...", "completion": "..."} on every line)'
    )


def is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def text_problem(value) -> str | None:
    """Why ``value`` is neither a non-empty string nor a non-empty list of chat messages (None: it is fine)."""
    if isinstance(value, str):
        return None if value.strip() else "empty"
    if isinstance(value, list):
        return None if is_messages(value) else "not a list of {'role': str, 'content': str} messages"
    kind = type(value).__name__
    return "missing" if value is None else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}, not text or chat messages"


def has_text(value) -> bool:
    """Whether a completion cell holds a demonstration (anything but missing or blank; a bad one is refused later)."""
    return not (value is None or (isinstance(value, str) and not value.strip()))


ROLLOUT_ANSWER = "_rollout_answer"  # a rollout row's answer, whichever column it came from
NO_DEMONSTRATIONS = (
    "trl-irl learns from demonstrations: set task.completion_column to the column that holds them. "
    "Prompts without a demonstration are welcome beside them, for the RL arms to roll out on: as "
    "rows with an empty completion, or in a file of their own (task.rollout_path)"
)


def as_text(value):
    """A number read from a CSV, Parquet or JSON cell (``22``, ``0.5``) as the text it stands for; anything else as it
    is (a CSV column of answers is read as integers, and a demonstration is text)."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def prompt_key(prompt) -> str:
    """A row's prompt as a hashable key (chat messages as JSON): rows are split by distinct prompt."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def split_by_prompt(rows: list[dict], fraction: float, rng: random.Random, column: str) -> tuple[list, list]:
    """(rest, part): ``part`` holds the rows of ``ceil(fraction * distinct prompts)`` prompts drawn by ``rng``."""
    keys = sorted({prompt_key(r[column]) for r in rows})
    rng.shuffle(keys)
    chosen = set(keys[: math.ceil(fraction * len(keys))])
    return [r for r in rows if prompt_key(r[column]) not in chosen], [
        r for r in rows if prompt_key(r[column]) in chosen
    ]


class DatasetTask(Task):
    """Prompts and demonstrations from a file (see the module docstring); every field is a ``task.`` config key.

    Args:
        path: the file, ``save_to_disk`` folder or hub id.
        prompt_column / completion_column: the prompt and the demonstration (strings or chat messages).
        answer_column: the verifier's answer (None: the ``answer`` column if the file has one, else the
            demonstration is the answer).
        verifier: ``none``, ``exact``, ``numeric``, ``regex:<pattern>`` or ``python:<module>:<function>``
            (``verifiers.py``).
        split_column / train_split / heldout_split: rows whose split column holds ``train_split`` train, those
            with ``heldout_split`` are held out (others are ignored, and counted). A ``save_to_disk`` folder or hub
            dataset with these splits is split the same way. None: ``heldout_fraction`` of the prompts are held out.
        validation_fraction: validation rows (BC early stopping, reward pretraining's accuracy) per training row,
            of prompts no training row has; drawn from the rows ``num_demonstrations`` leaves over where it can.
        num_demonstrations / num_heldout: at most this many training / held-out rows (None: all), drawn by ``seed``.
        max_prompt_length: rows with a longer prompt (in tokens) are dropped, and counted (None: no limit).
        max_completion_length: the generation limit in tokens, EOS included; longer demonstrations are cut to it
            and counted (None: the longest demonstration's length + 1).
        seed: the draw of held-out, validation and capped rows.
        rollout_path: a file of prompts (any format ``path`` takes; the same prompt column, answers where it has
            them in ``answer_column`` or else ``answer``) the RL arms roll out on beside the demonstration prompts.
            Rows of ``path`` without a completion (missing or empty) are rollout prompts too. None: only those rows.
        num_rollout_prompts: at most this many rollout prompts, drawn by ``seed`` (None: all).
        rollout_pool: the prompts the RL arms roll out on: ``mixed`` (the demonstration prompts and the rollout
            prompts together, each equally likely), ``rollout`` (the rollout prompts alone) or ``demonstrations``.
            The oracle arm rolls out on those of them with an answer (a demonstration prompt always has one).

    Rollout prompts never include a held-out prompt (refused); a rollout prompt that has a demonstration (a training
    or validation prompt) is dropped and counted: the demonstration pool has the training ones.
    """

    name = "dataset"
    ROLLOUT_POOLS = ("mixed", "rollout", "demonstrations")

    def __init__(
        self,
        path: str,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        answer_column: str | None = None,
        verifier: str = "none",
        split_column: str | None = None,
        train_split: str = "train",
        heldout_split: str = "test",
        heldout_fraction: float = 0.1,
        validation_fraction: float = 0.1,
        num_demonstrations: int | None = None,
        num_heldout: int | None = None,
        max_prompt_length: int | None = None,
        max_completion_length: int | None = None,
        seed: int = 0,
        rollout_path: str | None = None,
        num_rollout_prompts: int | None = None,
        rollout_pool: str = "mixed",
    ):
        self.path, self.prompt_column, self.completion_column = str(path), prompt_column, completion_column
        self.split_column, self.train_split, self.heldout_split = split_column, str(train_split), str(heldout_split)
        self.heldout_fraction, self.validation_fraction = heldout_fraction, validation_fraction
        self.num_demonstrations, self.num_heldout, self.seed = num_demonstrations, num_heldout, seed
        self.max_prompt_length, self.max_completion_length = max_prompt_length, max_completion_length
        self.rollout_path = None if rollout_path is None else str(rollout_path)
        self.num_rollout_prompts, self.rollout_pool = num_rollout_prompts, str(rollout_pool)
        if self.rollout_pool not in self.ROLLOUT_POOLS:
            raise ValueError(
                f"task.rollout_pool={rollout_pool!r} is unknown: choose one of {', '.join(self.ROLLOUT_POOLS)}"
            )
        for key in ("heldout_fraction", "validation_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ValueError(f"task.{key} must be in (0, 1), got {getattr(self, key)}")
        for key in (
            "num_demonstrations",
            "num_heldout",
            "max_prompt_length",
            "max_completion_length",
            "num_rollout_prompts",
        ):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"task.{key} must be a positive integer or null, got {value!r}")
        self.splits = read_table(self.path)
        columns = sorted({c for rows in self.splits.values() for r in rows[:1] for c in r})
        if answer_column is None and "answer" in columns and "answer" != completion_column:
            answer_column = "answer"
        self.answer_column = answer_column
        if (
            completion_column not in columns
            and prompt_column in columns
            and not set(columns) - {prompt_column, split_column, answer_column, "answer"}
        ):
            raise ValueError(f"task.path={self.path} holds prompts only (columns {columns}). {NO_DEMONSTRATIONS}")
        for key, column in (
            ("prompt_column", prompt_column),
            ("completion_column", completion_column),
            ("answer_column", answer_column),
            ("split_column", split_column),
        ):
            if column is not None and column not in columns:
                unset = (
                    ", or leave it unset: the verifier then reads the demonstration, and task.rollout_path's answers "
                    "its 'answer' column"
                    if key == "answer_column"
                    else ""
                )
                raise ValueError(
                    f"task.{key}={column!r} is not a column of {self.path} (it has {columns}): set "
                    f"task.{key}=<one of them>{unset}"
                )
        self._verifier = make_verifier(verifier, answer_given=answer_column is not None)
        self.verifier_name = str(verifier)
        text_columns = {c for c in (prompt_column, completion_column, answer_column) if c is not None}
        for rows in self.splits.values():
            for row in rows:
                row.update({c: as_text(row.get(c)) for c in text_columns})
        self.all_rows = [r for rows in self.splits.values() for r in rows]
        self._check_rows()
        # rows without a demonstration are prompts for the RL arms (``rollout_rows``), never split or held out
        self.prompt_only = {id(r) for r in self.all_rows if not has_text(r.get(completion_column))}
        if len(self.prompt_only) == len(self.all_rows):
            raise ValueError(
                f"task.path={self.path}: none of its {len(self.all_rows)} row(s) has a demonstration in "
                f"its {completion_column!r} column. {NO_DEMONSTRATIONS}"
            )
        self.train_rows, self.heldout_rows, self.report = self._split()
        self.rollout_rows = self._rollout_rows()

    @property
    def verifier_spec(self) -> str:
        return f"task.verifier={self.verifier_name}"

    # --- reading and splitting (no tokenizer) -------------------------------------------------------------------
    def _check_rows(self):
        """Every row must hold text (or chat messages) in the prompt and completion columns, and an answer."""
        checks = [
            ("prompt_column", self.prompt_column, text_problem),  # a missing or empty completion: a rollout prompt
            ("completion_column", self.completion_column, lambda v: text_problem(v) if has_text(v) else None),
        ]
        if self.answer_column is not None:
            checks.append(
                (
                    "answer_column",
                    self.answer_column,
                    lambda v: "missing" if v is None or (isinstance(v, str) and not v.strip()) else None,
                )
            )
        for key, column, problem in checks:
            bad = [(i, p) for i, r in enumerate(self.all_rows) if (p := problem(r.get(column))) is not None]
            if bad:
                shown = ", ".join(f"row {i} ({p})" for i, p in bad[:5])
                lines = {".jsonl": "; a JSONL line is row + 1", ".csv": "; a CSV line is row + 2, after its header"}
                raise ValueError(
                    f"task.path={self.path}: {len(bad)} row(s) have no usable '{column}' "
                    f"(task.{key}): {shown}{' ...' if len(bad) > 5 else ''} (rows counted from 0"
                    f"{lines.get(Path(self.path).suffix.lower(), '')}). Fix or remove them"
                )

    def _split(self) -> tuple[list[dict], list[dict], dict]:
        """(training rows, held-out rows, report): rows with a demonstration only; the training split's rows
        without one are kept in ``self.prompt_only_train`` for ``_rollout_rows``."""
        rng = random.Random(self.seed)
        report: dict = {"path": self.path}
        with_demo = lambda rows: [r for r in rows if id(r) not in self.prompt_only]  # noqa: E731
        if self.split_column is not None or set(self.splits) - {None}:
            rows = self.all_rows
            if self.split_column is not None:
                values = sorted({str(r[self.split_column]) for r in rows})
                train = [r for r in rows if str(r[self.split_column]) == self.train_split]
                heldout = [r for r in rows if str(r[self.split_column]) == self.heldout_split]
                where, found = f"task.split_column={self.split_column}", values
            else:
                train = self.splits.get(self.train_split, [])
                heldout = self.splits.get(self.heldout_split)
                where, found = "the dataset's splits", sorted(self.splits)
                if heldout is None:  # one split only: hold out prompts from it
                    self.prompt_only_train = [r for r in train if id(r) in self.prompt_only]
                    train, heldout = split_by_prompt(with_demo(train), self.heldout_fraction, rng, self.prompt_column)
            for name, part, value in (
                ("train_split", train, self.train_split),
                ("heldout_split", heldout, self.heldout_split),
            ):
                if not part:
                    raise ValueError(
                        f"task.path={self.path}: no rows with {where} = {value!r} (task.{name}); the "
                        f"values found are {found}: set task.{name}=<one of them>"
                    )
            unanswered = [r for r in heldout if id(r) in self.prompt_only]
            if unanswered:
                raise ValueError(
                    f"task.path={self.path}: {len(unanswered)} held-out row(s) ({where} = "
                    f"{self.heldout_split!r}) have no demonstration in task.completion_column, and held-out "
                    "rows are evaluated against theirs: give them one, or move them to the training split, "
                    "where a row without a demonstration is a prompt the RL arms roll out on"
                )
            self.prompt_only_train = getattr(self, "prompt_only_train", [r for r in train if id(r) in self.prompt_only])
            train = with_demo(train)
            if not train:
                raise ValueError(
                    f"task.path={self.path}: no training row ({where} = {self.train_split!r}) has a "
                    f"demonstration. {NO_DEMONSTRATIONS}"
                )
            report["ignored_split_rows"] = len(rows) - len(train) - len(heldout) - len(self.prompt_only_train)
            shared = {prompt_key(r[self.prompt_column]) for r in train} & {
                prompt_key(r[self.prompt_column]) for r in heldout
            }
            report["heldout_prompts_in_train"] = len(shared)
            if shared:
                n_heldout = len({prompt_key(r[self.prompt_column]) for r in heldout})
                warnings.warn(
                    f"task.path={self.path}: {len(shared)} of {n_heldout} held-out prompts also appear in "
                    "training rows, so held-out scores partly measure recall; leave task.split_column "
                    "unset to split by prompt (task.heldout_fraction)",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            rows = with_demo(self.all_rows)
            self.prompt_only_train = [r for r in self.all_rows if id(r) in self.prompt_only]
            train, heldout = split_by_prompt(rows, self.heldout_fraction, rng, self.prompt_column)
            if not train:
                n = len({prompt_key(r[self.prompt_column]) for r in rows})
                raise ValueError(
                    f"task.path={self.path} has {n} distinct prompt(s): holding out "
                    f"task.heldout_fraction={self.heldout_fraction} of them leaves none for training; add "
                    "rows or lower it"
                )
        report["rows_read"] = len(self.all_rows)
        if self.prompt_only:
            report["rows_without_demonstration"] = len(self.prompt_only)
        rng.shuffle(train)
        rng.shuffle(heldout)
        return train, heldout, report

    def _rollout_rows(self) -> list[dict]:
        """The rollout prompts' rows (the training split's rows without a demonstration, then ``rollout_path``'s),
        one per distinct prompt, none held out (refused) and none with a demonstration (dropped, counted in
        ``self.report``); validation prompts and the ``num_rollout_prompts`` cap are applied in ``data``."""
        main_answer = (lambda r: r.get(self.answer_column)) if self.answer_column else (lambda r: None)
        rows = [
            ({**r, ROLLOUT_ANSWER: main_answer(r)}, "rows of task.path without a completion")
            for r in self.prompt_only_train
        ]
        if self.rollout_path is not None:
            file_rows = [r for part in read_table(self.rollout_path, "task.rollout_path").values() for r in part]
            columns = sorted({c for r in file_rows[:1] for c in r})
            if self.prompt_column not in columns:
                raise ValueError(
                    f"task.prompt_column={self.prompt_column!r} is not a column of task.rollout_path="
                    f"{self.rollout_path} (it has {columns}): its prompts need the main file's prompt "
                    "column name"
                )
            # the answer column: the main file's (task.answer_column), or the file's own `answer` column; a row
            # without one is a prompt for online IRL alone (the oracle needs an answer; counted in the report)
            answer_column = self.answer_column or "answer"
            for i, r in enumerate(file_rows):
                problem = text_problem(as_text(r.get(self.prompt_column)))
                answer = as_text(r.get(answer_column))
                answer = answer if has_text(answer) else None
                if problem is not None:
                    line = {".jsonl": f"line {i + 1}", ".csv": f"line {i + 2}"}.get(
                        Path(self.rollout_path).suffix.lower(), f"row {i + 1}"
                    )
                    raise ValueError(
                        f"task.rollout_path={self.rollout_path}: its {line} is unusable: prompt {problem}. Fix or "
                        "remove it"
                    )
                rows.append(({self.prompt_column: r[self.prompt_column], ROLLOUT_ANSWER: answer}, "task.rollout_path"))
        heldout = {prompt_key(r[self.prompt_column]) for r in self.heldout_rows}
        clashes = [(r, where) for r, where in rows if prompt_key(r[self.prompt_column]) in heldout]
        if clashes:
            shown = "; ".join(f"{str(r[self.prompt_column])[:60]!r} ({where})" for r, where in clashes[:5])
            more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
            raise ValueError(
                f"{len(clashes)} rollout prompt(s) are also held-out prompts, which are only evaluated: "
                f"{shown}{more}. Remove them from the rollout prompts (task.rollout_path, or rows of task.path "
                "without a completion); the held-out rows are drawn by task.seed, or are the rows you mark with "
                "task.split_column"
            )
        demonstrated = {prompt_key(r[self.prompt_column]) for r in self.train_rows}
        kept: dict[str, dict] = {}
        with_demonstration = 0
        for r, _ in rows:
            key = prompt_key(r[self.prompt_column])
            if key in demonstrated:
                with_demonstration += 1
            elif key not in kept:
                kept[key] = r
            elif kept[key][ROLLOUT_ANSWER] is None:  # a repeat: its answer, where the first had none
                kept[key] = {**kept[key], ROLLOUT_ANSWER: r[ROLLOUT_ANSWER]}
        kept = list(kept.values())
        if rows:
            self.report |= {
                "rollout_prompts_read": len(rows),
                "rollout_prompts_with_demonstration": with_demonstration,
                "rollout_prompts_repeated": len(rows) - len(kept) - with_demonstration,
            }
        random.Random(self.seed + 2).shuffle(kept)
        return kept

    # --- the Task interface -----------------------------------------------------------------------------------
    @property
    def verifier(self):
        return self._verifier

    @property
    def chat(self) -> bool:
        return any(
            isinstance(r.get(c), list)
            for r in self.all_rows + self.rollout_rows
            for c in (self.prompt_column, self.completion_column)
        )

    @property
    def alphabet(self) -> list[str]:
        """Every character of the file's prompts and demonstrations (and of the chat template a character
        tokenizer renders messages with): what the tiny model's tokenizer is built from."""
        from ..models import CHAR_CHAT_LITERALS  # models imports transformers: reading a task's rows stays light

        chars = set(CHAR_CHAT_LITERALS) if self.chat else set()
        for r in self.all_rows + self.rollout_rows:
            for column in (self.prompt_column, self.completion_column):
                value = r.get(column)
                if not has_text(value):
                    continue
                for text in [value] if isinstance(value, str) else [m[k] for m in value for k in ("role", "content")]:
                    chars.update(text)
        return sorted(chars)

    def render_prompt(self, tokenizer, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"task.prompt_column={self.prompt_column!r} holds chat messages, but the tokenizer has no "
                "chat template: use a chat model (model.path=...), or give the prompts as plain text"
            )
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    @staticmethod
    def render_completion(completion) -> str:
        """A demonstration's text: the string, or the content of its (assistant) messages."""
        return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)

    def draw_validation(self, rows: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
        """(train, validation): ``num_demonstrations`` training rows (all: None) and ``validation_fraction`` times as
        many validation rows, of other prompts, taken from the rows left over where there are enough."""
        keys = list(dict.fromkeys(r["prompt"] for r in rows))  # rows are shuffled already: prompts in that order
        rng.shuffle(keys)
        by_prompt: dict[str, list[dict]] = {}
        for r in rows:
            by_prompt.setdefault(r["prompt"], []).append(r)
        n_train = min(self.num_demonstrations or len(rows), len(rows))
        n_validation = math.ceil(self.validation_fraction * n_train)
        if n_train + n_validation > len(rows):  # not enough rows for both: validation comes out of the training rows
            n_train = len(rows) - n_validation
        validation, train = [], []
        for key in keys:  # whole prompts, validation first, so no validation prompt is trained on
            (validation if len(validation) < n_validation else train).extend(by_prompt[key])
        if not train or not validation:
            raise ValueError(
                f"task.path={self.path}: {len(keys)} distinct training prompt(s) cannot give both "
                "training and validation rows: add rows, or lower task.validation_fraction"
            )
        return train[:n_train], validation

    def check_long_completions(self, lengths: list[int], factor: float = 4.0, floor: int = 64):
        """With ``max_completion_length`` left to the longest demonstration, a few demonstrations far longer than the
        rest (over ``factor`` x the 99th percentile of lengths in tokens, and over ``floor``) would make every sample
        of every step that long: refused with their count and the limit that cuts them."""
        typical = float(np.percentile(lengths, 99, method="lower"))  # a length some demonstration has
        long = sorted(n for n in lengths if n > max(factor * typical, floor))
        if long:
            keep = max(n for n in lengths if n <= max(factor * typical, floor)) + 1
            raise ValueError(
                f"task.path={self.path}: {len(long)} of the {len(lengths)} demonstrations are far longer "
                f"than the rest ({', '.join(map(str, long[-3:]))} tokens; 99% have at most {typical:.0f}), "
                f"and task.max_completion_length=null would let every sample run to {long[-1] + 1} "
                f"tokens, each step many times slower. Set task.max_completion_length={keep} to cut the "
                f"{len(long)} and keep every other whole, or task.max_completion_length={long[-1] + 1} "
                "to keep them all"
            )

    def data(self, tokenizer, seed: int = 0) -> TaskData:
        """Render chat messages, drop rows whose prompt is over ``max_prompt_length`` tokens, draw the training and
        validation rows, cap the held-out rows and cut demonstrations to ``max_completion_length``. ``seed``
        is unused: the file's split is ``task.seed``'s, the same for every run seed (one held-out set to compare)."""
        rng = random.Random(self.seed + 1)
        report = dict(self.report, chat=self.chat)

        def prepared(rows):
            out = []
            for r in rows:
                prompt = self.render_prompt(tokenizer, r[self.prompt_column])
                out.append(
                    {
                        "prompt": prompt,
                        "completion": self.render_completion(r[self.completion_column]),
                        "answer": (
                            str(r[self.answer_column])
                            if self.answer_column is not None
                            else self.render_completion(r[self.completion_column])
                        ),
                        "row": r,
                        "_prompt_tokens": len(ids(prompt)),
                    }
                )
            return out

        def ids(text):
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        def prepared_prompts(rows):
            out = []
            for r in rows:
                prompt = self.render_prompt(tokenizer, r[self.prompt_column])
                answer = r[ROLLOUT_ANSWER]
                out.append(
                    {
                        "prompt": prompt,
                        "completion": None,
                        "answer": str(answer) if has_text(answer) else None,
                        "row": r,
                        "_prompt_tokens": len(ids(prompt)),
                    }
                )
            return out

        train, heldout = prepared(self.train_rows), prepared(self.heldout_rows)
        rollout = prepared_prompts(self.rollout_rows)
        dropped = 0
        if self.max_prompt_length is not None:
            keep = lambda rows: [r for r in rows if r["_prompt_tokens"] <= self.max_prompt_length]  # noqa: E731
            dropped = len(train) + len(heldout) - len(kept_train := keep(train)) - len(kept_heldout := keep(heldout))
            train, heldout = kept_train, kept_heldout
            if rollout:
                report["rollout_dropped_long_prompts"] = len(rollout) - len(kept_rollout := keep(rollout))
                rollout = kept_rollout
        report["dropped_long_prompts"] = dropped
        for name, rows in (("training", train), ("held-out", heldout)):
            if not rows:  # only a prompt limit removes rows here
                raise ValueError(
                    f"task.path={self.path}: no {name} rows left with prompts of at most "
                    f"task.max_prompt_length={self.max_prompt_length} tokens: raise it (or set null)"
                )
        train, validation = self.draw_validation(train, rng)
        heldout = heldout[: self.num_heldout] if self.num_heldout else heldout
        rollout = self.rollout_pool_rows(rollout, train, validation, heldout, report)
        everything = train + validation + heldout
        lengths = [len(ids(r["completion"])) for r in everything]
        if self.max_completion_length is None:
            self.check_long_completions(lengths)
        limit = self.max_completion_length or max(lengths) + 1
        truncated = 0
        for r in train + validation + heldout:
            completion_ids = ids(r["completion"])
            if len(completion_ids) + 1 > limit:  # no room for EOS: the demonstration is cut at the limit
                r["completion"] = tokenizer.decode(completion_ids[:limit], skip_special_tokens=True)
                truncated += 1
        report |= {
            "train": len(train),
            "validation": len(validation),
            "heldout": len(heldout),
            "truncated_completions": truncated,
            "max_completion_length": limit,
        }
        longest = max(r.pop("_prompt_tokens") for r in train + validation + heldout + rollout)
        data = TaskData(
            train=train,
            validation=validation,
            heldout=heldout,
            max_completion_length=limit,
            max_prompt_length=longest,
            report=report,
            rollout=rollout,
            rollout_pool=self.rollout_pool,
        )
        if "rollout_pool" in report:  # what the online-IRL arm and the oracle roll out on
            report |= {"online_irl_pool": len(data.policy_rows()), "oracle_pool": len(data.policy_rows(verifier=True))}
        return data

    def rollout_pool_rows(
        self, rollout: list[dict], train: list[dict], validation: list[dict], heldout: list[dict], report: dict
    ) -> list[dict]:
        """The rollout prompts ``num_rollout_prompts`` keeps (a validation prompt is never one: it has a
        demonstration); the pools' counts go in ``report`` (metrics.json's ``task``), and an empty pool the RL arms
        need is refused."""
        kept = rollout[: self.num_rollout_prompts] if self.num_rollout_prompts else rollout
        clashes = len({r["prompt"] for r in kept} & {r["prompt"] for r in heldout + validation})
        if self.rollout_pool == "rollout" and not kept:
            raise ValueError(
                "task.rollout_pool=rollout, but no rollout prompt is left"
                f"{' (of ' + str(len(self.rollout_rows)) + ')' if self.rollout_rows else ''}: give prompts "
                "without demonstrations (task.rollout_path, or rows of task.path with an empty "
                "completion), or set task.rollout_pool=mixed"
            )
        if clashes:  # refused or dropped in _rollout_rows by the file's prompts: this checks the rendered prompts
            raise ValueError(
                f"{clashes} rollout prompt(s) render to a held-out or validation prompt: remove them from "
                "the rollout prompts"
            )
        if self.rollout_rows or self.rollout_pool != "mixed":
            report |= {
                "rollout_pool": self.rollout_pool,
                "rollout_prompts": len(kept),
                "rollout_prompts_with_answer": sum(r["answer"] is not None for r in kept),
                "heldout_prompts_in_rollout": clashes,
                "demonstration_prompts": len(train),
            }
        return kept
