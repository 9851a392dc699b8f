"""Baseline featurizers: neurons (identity) with a mask, and k orthonormal directions.

- ``noop``: identity with no feature swapped (Cause 0, Isolate 1 on any instance);
- ``full``: identity with every feature swapped (the full-vector swap);
- ``random:K``: K random orthonormal directions, a subspace of the same size as DAS's.
"""

import torch

from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer


class IdentityFeaturizer(Featurizer):
    """Features are the neurons; ``mask`` (bool ``[d_model]``) selects the swapped ones.

    The intervention is an exact ``torch.where`` (no floating-point round trip).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(d_model=int(mask.shape[0]))
        self.register_buffer("mask", mask.bool().clone())

    @classmethod
    def full(cls, d_model: int) -> "IdentityFeaturizer":
        """Swap every neuron: the full-vector swap."""
        return cls(torch.ones(d_model, dtype=torch.bool))

    @classmethod
    def noop(cls, d_model: int) -> "IdentityFeaturizer":
        """Swap nothing."""
        return cls(torch.zeros(d_model, dtype=torch.bool))

    @property
    def feature_mask(self) -> torch.Tensor:
        return self.mask

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, source, base)


class RotationFeaturizer(Featurizer):
    """k orthonormal directions: ``directions`` has shape ``[k, d_model]`` (rows = directions).

    ``featurize(h) = h @ directions.T`` (``[batch, k]``) and ``unfeaturize(f) = f @ directions``;
    every feature is swapped, so ``intervene(b, s) = b + ((s - b) @ R.T) @ R``.
    """

    def __init__(self, directions: torch.Tensor) -> None:
        k, d_model = directions.shape
        if k > d_model:
            raise ConfigError(f"k={k} directions cannot be orthonormal in d_model={d_model}")
        super().__init__(d_model=d_model)
        self.register_buffer("directions", directions.float().clone())

    @property
    def feature_mask(self) -> torch.Tensor:
        return torch.ones(self.directions.shape[0], dtype=torch.bool, device=self.directions.device)

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.directions.T  # [batch, k]

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.directions  # [batch, d_model]


def random_subspace(d_model: int, k: int, seed: int = 0) -> RotationFeaturizer:
    """Return ``k`` random orthonormal directions (QR of a seeded Gaussian matrix)."""
    if not 1 <= k <= d_model:
        raise ConfigError(f"random subspace size k={k} must be in 1..d_model={d_model}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(d_model, k, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gaussian)  # [d_model, k], orthonormal columns
    return RotationFeaturizer(q.T.float().contiguous())
