"""Tasks: the prompts, demonstrations and optional verifier every stage consumes (``base.Task``).

``automaton``: a known expert with exact log-probabilities; ``dataset``: your file of prompts and demonstrations.
"""

from .automaton import AutomatonTask
from .base import TASKS, Task, TaskData, make_task, register_task
from .dataset import DatasetTask
from .verifiers import make_verifier, register_verifier

register_task("automaton", AutomatonTask)
register_task("dataset", DatasetTask)

__all__ = [
    "TASKS",
    "AutomatonTask",
    "DatasetTask",
    "Task",
    "TaskData",
    "make_task",
    "make_verifier",
    "register_task",
    "register_verifier",
]
