"""Offline reward models r(query, prompt) ~ P(the LLM answers the query correctly under the prompt).

Each takes pair features (``features.pair_features``) and 0/1 labels of observed cells only, and exposes
``fit(X, y)`` / ``predict(X)`` (probabilities). ``REWARD_MODELS`` maps the config name to the class; its keyword
arguments are the config's ``rm.params``.
"""

from __future__ import annotations

import numpy as np
import torch


class GBDTReward:
    """Gradient-boosted trees (LightGBM). The paper used XGBoost (max_depth 10, eta 0.001, 2000 rounds); LightGBM's
    histogram trees fit the same model class in seconds here, so the defaults are fewer, larger steps."""

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        colsample_bytree: float = 0.5,
        seed: int = 0,
        threads: int = 1,
    ):
        from lightgbm import LGBMClassifier

        self.model = LGBMClassifier(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            max_depth=max_depth,
            min_child_samples=min_child_samples,
            colsample_bytree=colsample_bytree,
            subsample=0.8,
            subsample_freq=1,
            random_state=seed,
            n_jobs=threads,
            verbose=-1,
            deterministic=True,
            force_col_wise=True,
        )  # same model on any thread count

    def fit(self, X: np.ndarray, y: np.ndarray) -> GBDTReward:
        self.model.fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)[:, 1]


class MLPReward:
    """A small torch MLP trained with binary cross-entropy and AdamW (full-batch-free minibatches, fixed epochs)."""

    def __init__(
        self,
        hidden: int = 256,
        epochs: int = 20,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        dropout: float = 0.1,
        seed: int = 0,
        threads: int = 1,
    ):
        self.hidden, self.epochs, self.lr, self.wd = hidden, epochs, learning_rate, weight_decay
        self.batch_size, self.dropout, self.seed, self.threads = batch_size, dropout, seed, threads
        self.net: torch.nn.Module | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPReward:
        torch.set_num_threads(self.threads)
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], self.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, 1),
        )
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.wd)
        X_t, y_t = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        self.net.train()
        for _ in range(self.epochs):
            for idx in torch.randperm(len(X_t), generator=g).split(self.batch_size):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(X_t[idx]).squeeze(-1), y_t[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("fit the reward model before predict")
        return torch.sigmoid(self.net(torch.as_tensor(X, dtype=torch.float32)).squeeze(-1)).numpy()


REWARD_MODELS = {"gbdt": GBDTReward, "mlp": MLPReward}


def make_reward_model(name: str, **params):
    if name not in REWARD_MODELS:
        raise ValueError(f"rm.name={name!r} is unknown: choose one of {sorted(REWARD_MODELS)}")
    return REWARD_MODELS[name](**params)
