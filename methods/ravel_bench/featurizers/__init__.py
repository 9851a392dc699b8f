"""Featurizers: bijections (or projections) of the residual stream with a set of swapped features."""

# Importing these modules registers "pca", "sae" and "rlap".
from ravel_bench.featurizers import pca, rlap, sae  # noqa: E402, F401, I001
from ravel_bench.featurizers.base import Featurizer, FeaturizerConfig
from ravel_bench.featurizers.baselines import (
    IdentityFeaturizer,
    RotationFeaturizer,
    random_subspace,
)
from ravel_bench.featurizers.registry import parse_featurizer_spec

__all__ = [
    "Featurizer",
    "FeaturizerConfig",
    "IdentityFeaturizer",
    "RotationFeaturizer",
    "parse_featurizer_spec",
    "random_subspace",
]
