"""The task interface: what every pipeline stage and the evaluation consume, and the registry of tasks.

A task gives rows of (prompt, demonstration) text, split three ways, a completion length limit, and optional
capabilities. Stages never ask what task they run: BC trains on ``train`` and early-stops on ``validation``,
reward learning pairs ``train`` demonstrations with policy samples, the RL arms roll out on ``policy_rows()``
(``train`` prompts, and ``rollout`` prompts without a demonstration where the task has them), and only the
evaluation reads ``heldout``.

Write your own by subclassing ``Task`` (``data`` is the one method you must write) and registering a factory::

    from trl_irl.tasks import Task, TaskData, register_task

    @register_task("sorting")
    def sorting(n: int = 100, **_):
        return MySortingTask(n)

    # CLI: trl-irl task.name=my_module:sorting   (imports my_module, calls sorting(**task config))
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from ..validation import check_types
from .verifiers import import_callable


@dataclass
class TaskData:
    """Rows, each a dict with plain-text ``prompt`` and ``completion`` (the demonstration) plus any columns of the
    task's own (an answer, the raw row). ``max_completion_length`` is the generation limit in tokens (EOS
    included); ``max_prompt_length`` the longest prompt in tokens, which sizes a model built from a config;
    ``report`` says what preparing the data did (rows read, dropped, truncated), for metrics.json.

    ``rollout`` rows are prompts without a demonstration (``completion`` None; ``answer`` None where there is
    none), for the RL arms to roll out on; ``rollout_pool`` says which prompts they roll out on
    (``policy_rows``)."""

    train: list[dict]
    validation: list[dict]
    heldout: list[dict]
    max_completion_length: int
    max_prompt_length: int
    report: dict = field(default_factory=dict)
    rollout: list[dict] = field(default_factory=list)
    rollout_pool: str = "mixed"

    def policy_rows(self, verifier: bool = False) -> list[dict]:
        """The rows an RL arm rolls out on: the training rows (``completion``: the demonstration the online reward
        learns from) and/or the rollout prompts, as ``rollout_pool`` says (``mixed``: both, ``rollout``,
        ``demonstrations``). ``verifier``: the oracle's, only rows with an answer for the verifier."""
        rollout = [r for r in self.rollout if r.get("answer") is not None] if verifier else self.rollout
        return {"mixed": self.train + rollout, "rollout": rollout, "demonstrations": self.train}[self.rollout_pool]


class Task:
    """Base class of tasks.

    Required: ``data(tokenizer, seed) -> TaskData``.
    Optional capabilities (absent, not faked, where a task lacks them):
        verifier   ``score(prompt, completion, row) -> float`` (1 correct, 0 wrong): the success rate, and the
                   oracle arm's reward. None: neither exists.
        metrics    ``metrics(prompts, samples) -> dict``: per-arm metrics only this task can compute (the
                   automaton: exact expert log-probabilities); ``reference()`` their values for the expert.
        alphabet   the characters a character tokenizer needs (the tiny model built from a config); None: the
                   task's text is known only once read, see ``DatasetTask.alphabet``.
    """

    name = "task"

    @property
    def verifier(self) -> Callable[[str, str, dict], float] | None:
        return None

    @property
    def verifier_spec(self) -> str:
        """The verifier as the user chose it, for messages (``task.verifier=regex:...``)."""
        return "the task's verifier"

    @property
    def alphabet(self) -> list[str] | None:
        return None

    def data(self, tokenizer, seed: int) -> TaskData:
        raise NotImplementedError

    def check_tokenizer(self, tokenizer, model_path: str):
        """Raise if this task cannot be written with ``tokenizer`` (before any model loads)."""

    def metrics(self, prompts: list[str], samples: list[str]) -> dict[str, float]:
        return {}

    def reference(self) -> dict[str, float]:
        return {}


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task] | None = None):
    """Make ``task.name=<name>`` build a task with ``factory(**task config)`` (usable as a decorator). The CLI's
    ``task.name=<module>:<function>`` imports a module of yours and calls the function, registered or not."""

    def add(fn):
        TASKS[name] = fn
        return fn

    return add if factory is None else add(factory)


def make_task(task_cfg: dict) -> Task:
    """The task ``task.name`` names, built from the rest of the ``task`` group; errors name the config key."""

    cfg = dict(task_cfg)
    name = str(cfg.pop("name"))
    factory = TASKS.get(name) or (import_callable(name, "task.name") if ":" in name else None)
    if factory is None:
        raise ValueError(
            f"task.name={name!r} is unknown: choose one of {sorted(TASKS)}, or <module>:<function> "
            "for a task of your own (see trl_irl.tasks.register_task)"
        )

    try:  # a field typed as a number or a switch must hold one ("10%" for a float is refused with the fix)
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    check_types(cfg, hints, lambda key: f"task.{key}")
    try:
        task = factory(**cfg)
    except TypeError as error:  # an unknown key in the task group
        raise ValueError(f"task.name={name}: {error}; fix the key under task:") from None
    if not isinstance(task, Task):
        raise TypeError(f"task.name={name} built a {type(task).__name__}, not a trl_irl.tasks.Task")
    return task
