"""Known-expert tasks: demonstrations, exact expert log-probabilities and success checks."""

from .automaton import AutomatonTask

TASKS = {"automaton": AutomatonTask}

__all__ = ["AutomatonTask", "TASKS"]
