"""Baseline featurizers: neurons (identity) with a mask, and k orthonormal directions.

- ``noop``: identity with no feature swapped (Cause 0, Isolate 1 on any instance);
- ``full``: identity with every feature swapped (the full-vector swap);
- ``random:K``: K random orthonormal directions, a subspace of the same size as DAS's.

:class:`RotationFeaturizer` is also the saved form of DAS and MDAS (their trained directions).
"""

import torch

from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer, FeaturizerConfig


class IdentityFeaturizer(Featurizer):
    """Features are the neurons; the ``mask`` buffer (bool ``[d_model]``) selects the swapped ones.

    The intervention is an exact ``torch.where`` (no floating-point round trip).
    """

    def __init__(self, config: FeaturizerConfig) -> None:
        super().__init__(config)
        if config.n_features != config.d_model:
            raise ConfigError(
                f"identity featurizer: n_features={config.n_features} must equal "
                f"d_model={config.d_model}"
            )
        self.register_buffer("mask", torch.zeros(config.d_model, dtype=torch.bool))

    @classmethod
    def from_mask(cls, mask: torch.Tensor, method: str = "mask", **config) -> "IdentityFeaturizer":
        """Build one from a bool ``[d_model]`` mask."""
        d_model = int(mask.shape[0])
        featurizer = cls(
            FeaturizerConfig(
                method=method, d_model=d_model, n_features=d_model, k=int(mask.sum()), **config
            )
        )
        featurizer.mask.copy_(mask.bool())
        return featurizer

    @classmethod
    def full(cls, d_model: int, **config) -> "IdentityFeaturizer":
        """Swap every neuron: the full-vector swap."""
        return cls.from_mask(torch.ones(d_model, dtype=torch.bool), method="full", **config)

    @classmethod
    def noop(cls, d_model: int, **config) -> "IdentityFeaturizer":
        """Swap nothing."""
        return cls.from_mask(torch.zeros(d_model, dtype=torch.bool), method="noop", **config)

    @property
    def feature_mask(self) -> torch.Tensor:
        return self.mask

    def check_tensors(self) -> None:
        """The mask must swap ``k`` neurons: none for ``noop``, all for ``full``."""
        swapped = int(self.mask.sum())
        if swapped != self.config.k:
            raise ConfigError(
                f"the mask swaps {swapped} neurons but the config says k={self.config.k}"
            )
        expected = {"noop": 0, "full": self.config.d_model}.get(self.config.method)
        if expected is not None and swapped != expected:
            raise ConfigError(
                f"a {self.config.method!r} featurizer must swap {expected} neurons; this mask "
                f"swaps {swapped}"
            )

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, source, base)


class RotationFeaturizer(Featurizer):
    """k orthonormal directions: the ``directions`` buffer is ``[k, d_model]`` (rows = directions).

    ``featurize(h) = h @ directions.T`` (``[batch, k]``) and ``unfeaturize(f) = f @ directions``;
    every feature is swapped, so ``intervene(b, s) = b + ((s - b) @ R.T) @ R``.
    """

    def __init__(self, config: FeaturizerConfig) -> None:
        super().__init__(config)
        if config.k != config.n_features or config.k > config.d_model:
            raise ConfigError(
                f"rotation featurizer: k={config.k} must equal n_features={config.n_features} "
                f"and be at most d_model={config.d_model} (orthonormal rows)"
            )
        if config.orientation != "rows":
            raise ConfigError(f"rotation featurizer: orientation {config.orientation!r} != 'rows'")
        self.register_buffer("directions", torch.zeros(config.k, config.d_model))

    @classmethod
    def from_directions(
        cls, directions: torch.Tensor, method: str = "rotation", **config
    ) -> "RotationFeaturizer":
        """Build one from a ``[k, d_model]`` matrix with orthonormal rows."""
        k, d_model = directions.shape
        if k > d_model:
            raise ConfigError(f"k={k} directions cannot be orthonormal in d_model={d_model}")
        featurizer = cls(
            FeaturizerConfig(method=method, d_model=d_model, n_features=k, k=k, **config)
        )
        featurizer.directions.copy_(directions.float())
        return featurizer

    @property
    def feature_mask(self) -> torch.Tensor:
        return torch.ones(self.directions.shape[0], dtype=torch.bool, device=self.directions.device)

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.directions.T  # [batch, k]

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.directions  # [batch, d_model]


def random_subspace(d_model: int, k: int, seed: int = 0, **config) -> RotationFeaturizer:
    """Return ``k`` random orthonormal directions (QR of a seeded Gaussian matrix)."""
    if not 1 <= k <= d_model:
        raise ConfigError(f"random subspace size k={k} must be in 1..d_model={d_model}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(d_model, k, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gaussian)  # [d_model, k], orthonormal columns
    return RotationFeaturizer.from_directions(
        q.T.float().contiguous(), method="random", seed=seed, **config
    )
