"""The main job's stages (``training.py``, ``evaluate.py``), what they share (``context.py``) and the bookkeeping
around each (``runner.py``); ``pipeline.run`` runs them in order."""
