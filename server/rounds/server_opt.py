"""A server-side optimiser on the round's aggregate: FedAvgM (momentum) or FedAdam.

The aggregate (plain FedAvg / a robust aggregator, or the unmasked secure sum) gives a pseudo-
gradient `delta = aggregate - global`; the optimiser turns it into the step the global model
takes (Hsu et al. 2019, FedAvgM; Reddi et al. 2021, "Adaptive Federated Optimization", FedAdam).
It only reads the released aggregate, so under DP it is post-processing and costs no privacy
budget. Under DP the late rounds are noise-dominated: momentum averages the noise of several
rounds' aggregates and Adam normalises each coordinate's step by its recent magnitude.

Its state (moments) lives in the server process: a resumed run restarts them at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from clients.task.run_config import RunConfig

State = Mapping[str, np.ndarray]


@dataclass
class ServerOptimizer:
    """`kind` "none" (the aggregate is the new model), "momentum" or "adam"."""

    kind: str = "none"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    _m: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _v: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ServerOptimizer:
        return cls(cfg.server_optimizer, cfg.server_lr, cfg.server_beta1, cfg.server_beta2,
                   cfg.server_eps)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def step(self, glob: State, aggregate: State) -> dict[str, np.ndarray]:
        """The next global model. Non-float tensors (counters) take the aggregate as is."""
        out: dict[str, np.ndarray] = {}
        for name, new in aggregate.items():
            old = glob[name]
            if not self.active or not np.issubdtype(np.asarray(new).dtype, np.floating):
                out[name] = np.asarray(new)
                continue
            delta = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
            out[name] = (old + self.lr * self._direction(name, delta)).astype(old.dtype)
        return out

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        m = self._m.get(name)
        if self.kind == "momentum":  # FedAvgM: m = beta1 * m + delta
            self._m[name] = delta if m is None else self.beta1 * m + delta
            return self._m[name]
        # FedAdam (Reddi et al., Alg. 2): no bias correction; eps (tau) bounds the step
        m = np.zeros_like(delta) if m is None else m
        v = self._v.get(name, np.zeros_like(delta))
        self._m[name] = self.beta1 * m + (1 - self.beta1) * delta
        self._v[name] = self.beta2 * v + (1 - self.beta2) * delta * delta
        return self._m[name] / (np.sqrt(self._v[name]) + self.eps)
