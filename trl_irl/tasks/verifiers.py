"""Verifiers: ``score(prompt, completion, row) -> float``, 1.0 for a correct completion, 0.0 for a wrong one.

A verifier only evaluates (success rate) and rewards the oracle arm, the RL ceiling; online IRL never sees it.

=======================  ===========================================================================================
``task.verifier``        a completion is correct when
=======================  ===========================================================================================
``none``                 (no verifier: no success rate, no oracle arm)
``exact``                its stripped text equals the answer
``numeric``              its last number equals the answer's last number (GSM8K's ``#### 72``; ``1,000`` is 1000)
``regex:<pattern>``      the pattern's last match in it (group 1 if the pattern has a group) equals the answer
``python:<mod>:<fn>``    ``fn(prompt, completion, row)`` says so (any float; your module on ``sys.path`` or in the
                         working directory)
=======================  ===========================================================================================

A verifier reads the row's ``answer``: the value of ``task.answer_column`` when there is one; without it the
demonstration is the answer, read the same way as the completion (its stripped text, last number or last match), so
a file of prompts and demonstrations needs no extra column.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import sys
from collections.abc import Callable
from pathlib import Path

# a number as people write it: optional sign, thousands separators, decimals ("-1,234.5", "72", ".5")
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in ``text`` ("#### 72" -> 72.0, "$1,000." -> 1000.0); None if there is none."""
    found = [m for m in NUMBER.findall(text) if any(ch.isdigit() for ch in m)]
    return float(found[-1].replace(",", "")) if found else None


class Verifier:
    """Compares what ``extract`` reads from the completion with ``row["answer"]``: an answer (``answer_given``) or a
    demonstration, which ``extract`` reads too."""

    name = "exact"

    def __init__(self, answer_given: bool = True):
        self.answer_given = answer_given

    def extract(self, text: str):
        """What a text says as an answer (None: it says none)."""
        return text.strip()

    def read_answer(self, value):
        """The answer column's value in ``extract``'s terms."""
        return str(value).strip()

    def same(self, got, expected) -> bool:
        return got == expected

    def answer(self, row: dict):
        return self.read_answer(row["answer"]) if self.answer_given else self.extract(row["answer"])

    def __call__(self, prompt: str, completion: str, row: dict) -> float:
        got, expected = self.extract(completion), self.answer(row)
        return float(got is not None and expected is not None and self.same(got, expected))


class NumericVerifier(Verifier):
    name = "numeric"

    def extract(self, text):
        return last_number(text)

    def read_answer(self, value):
        return float(value) if isinstance(value, (int, float)) else last_number(str(value))

    def same(self, got, expected):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)


class RegexVerifier(Verifier):
    name = "regex"

    def __init__(self, pattern: str, answer_given: bool = True):
        super().__init__(answer_given)
        try:
            self.pattern = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"task.verifier=regex:{pattern} is not a valid regular expression ({error})") from None

    def extract(self, text):
        matches = list(self.pattern.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if self.pattern.groups else last.group(0)).strip()


class BadScore(ValueError):
    """A verifier returned something other than a number in [0, 1]."""


def is_score(value) -> bool:
    """A verifier's return is a number in [0, 1] (a bool counts)."""
    return isinstance(value, numbers.Real) and 0 <= value <= 1


class PythonVerifier(Verifier):
    """A user's callable ``fn(prompt, completion, row) -> float`` in [0, 1] (a bool is a number too); ``row`` is the
    row as the file holds it (the task's row keeps it under ``"row"``). Anything else it returns is a ``BadScore``."""

    name = "python"

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def __call__(self, prompt, completion, row):
        value = self.fn(prompt, completion, row.get("row", row))
        if not is_score(value):
            raise BadScore(f"returned {value!r} ({type(value).__name__}), not a number in [0, 1] (1 correct, 0 wrong)")
        return float(value)


# task.verifier=<name>: functions registered from Python (register_verifier, trl_irl.run(verifier=...))
VERIFIERS: dict[str, Callable] = {}
BUILT_IN = ("none", "exact", "numeric", "regex", "python")


def register_verifier(fn: Callable, name: str | None = None) -> str:
    """Make ``task.verifier=<name>`` (default: the function's name) score with ``fn(prompt, completion, row) -> float``
    in [0, 1], ``row`` the row as your file holds it; returns the name."""
    name = name or re.sub(r"\W", "_", getattr(fn, "__name__", "verifier"))
    if not callable(fn):
        raise ValueError(f"verifier {name!r}: give a function fn(prompt, completion, row) -> float, got {fn!r}")
    if name in BUILT_IN or not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"verifier name {name!r}: choose a plain name other than {list(BUILT_IN)}")
    VERIFIERS[name] = fn
    return name


def check_on_demonstrations(verifier: Callable, rows: list[dict], min_share: float, spec: str, truncated: int = 0):
    """The task's verifier on every demonstration (``rows``: prompt, completion and the rest of each row), before any
    model loads: it must not raise, must return a number in [0, 1], and must score at least ``min_share``
    (``min_demo_success``) of them 1: a verifier that does not pass the demonstrations (a pattern that matches none, an
    answer column that does not fit) cannot tell a policy's right answers from its wrong ones. A policy's samples can
    be any text, so an empty and a garbled completion must get a score too."""

    def score(row: dict, completion: str, shown: str) -> float:
        try:
            value = verifier(row["prompt"], completion, row)
        except BadScore as error:
            raise ValueError(f"{spec} {error} on {shown}: a verifier returns a number in [0, 1]") from None
        except Exception as error:
            raise ValueError(
                f"{spec} raised {type(error).__name__}: {error} on {shown}. It scores every sample the "
                "policy writes, as fn(prompt, completion, row): make it return 0 for text it cannot read "
                "rather than raise"
            ) from None
        if not is_score(value):  # a verifier that is not a PythonVerifier: checked here
            raise ValueError(f"{spec} returned {value!r} on {shown}: a verifier returns a number in [0, 1]")
        return float(value)

    scores = [
        score(r, r["completion"], f"the demonstration {r['completion'][:60]!r} of the prompt {r['prompt'][:60]!r}")
        for r in rows
    ]
    for text, what in (
        (("", "an empty completion"), (rows[0]["completion"][::-1] + " ?!", "a garbled completion")) if rows else ()
    ):
        score(rows[0], text, f"{what} ({text[:60]!r}) of the prompt {rows[0]['prompt'][:60]!r}")
    correct = sum(v == 1 for v in scores)
    if scores and correct < min_share * len(scores):
        cut = f"; {truncated} of them were cut to task.max_completion_length, which may be why" if truncated else ""
        raise ValueError(
            f"{spec} scores {correct} of the {len(scores)} demonstrations correct "
            f"({correct / len(scores):.0%}), below min_demo_success={min_share:g}{cut}: a verifier that "
            "does not pass the demonstrations cannot judge the policy's answers. Fix the verifier (for "
            "task=dataset: task.verifier, task.answer_column), or where the demonstrations are not all "
            f"correct lower min_demo_success (e.g. min_demo_success={math.floor(100 * correct / len(scores)) / 100:g})"
        )


def import_callable(spec: str, where: str) -> Callable:
    """``module:function`` -> the function; the working directory is searched too (a checker next to your data)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"{where}={spec!r} must be <module>:<function>, e.g. my_checks:score")
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{where}: cannot import module {module_name!r} ({error}); put {module_name}.py in the "
            "working directory or install it"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where}: module {module_name!r} has no function {attr!r}")
    return fn


def make_verifier(spec: str | None, answer_given: bool = True):
    """The verifier ``task.verifier`` names, or None for ``none``; ``answer_given``: ``row["answer"]`` is an answer
    (False: a demonstration, read like a completion)."""
    spec = "none" if spec is None else str(spec)
    kind, _, arg = spec.partition(":")
    if kind == "none" and not arg:
        return None
    if kind == "exact" and not arg:
        return Verifier(answer_given)
    if kind == "numeric" and not arg:
        return NumericVerifier(answer_given)
    if kind == "regex" and arg:
        return RegexVerifier(arg, answer_given)
    if kind == "python" and arg:
        return PythonVerifier(import_callable(arg, "task.verifier=python"))
    if spec in VERIFIERS:
        return PythonVerifier(VERIFIERS[spec])
    registered = f", a name given to register_verifier ({', '.join(sorted(VERIFIERS))})" if VERIFIERS else ""
    raise ValueError(
        f"task.verifier={spec!r} is unknown: choose none, exact, numeric, regex:<pattern>, "
        f"python:<module>:<function>{registered}"
    )
