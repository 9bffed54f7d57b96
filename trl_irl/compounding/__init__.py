"""The compounding-error study: BC vs online IRL vs the oracle and DAgger across horizons on the
known-expert automaton, with a GRU policy rolled out in a vectorised loop (``env.py``) and the arms in ``arms.py``."""
