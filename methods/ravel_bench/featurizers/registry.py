"""Featurizer specs on the command line: ``noop``, ``full``, ``random:K``."""

from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.featurizers.baselines import IdentityFeaturizer, random_subspace

BASELINES = ("noop", "full", "random")


def parse_featurizer_spec(spec: str, d_model: int, seed: int = 0) -> Featurizer:
    """Build a baseline featurizer from its spec.

    Args:
        spec: ``"noop"``, ``"full"`` or ``"random:K"`` (K random orthonormal directions).
        d_model: width of the residual stream.
        seed: seed of the random subspace.

    Raises:
        ConfigError: an unknown spec or a bad K.
    """
    name, _, arg = spec.partition(":")
    if name == "noop" and not arg:
        return IdentityFeaturizer.noop(d_model)
    if name == "full" and not arg:
        return IdentityFeaturizer.full(d_model)
    if name == "random":
        try:
            k = int(arg)
        except ValueError:
            raise ConfigError(f"featurizer {spec!r}: expected random:K with an integer K") from None
        return random_subspace(d_model, k, seed=seed)
    raise ConfigError(
        f"unknown featurizer {spec!r}; expected noop, full or random:K",
        hint="trained featurizers load from a folder or Hub repo once saved (see the README)",
    )
