"""Featurizer classes by method name, and command-line specs (``noop``, ``full``, ``random:K``)."""

from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.featurizers.baselines import (
    IdentityFeaturizer,
    RotationFeaturizer,
    random_subspace,
)

FEATURIZER_CLASSES: dict[str, type[Featurizer]] = {}


def register_featurizer(method: str, cls: type[Featurizer]) -> None:
    """Register the class that loads featurizers whose ``config.method`` is ``method``.

    Raises:
        ValueError: ``method`` is already registered or not lowercase.
    """
    if method != method.lower():
        raise ValueError(f"featurizer method names are lowercase, got {method!r}")
    if method in FEATURIZER_CLASSES:
        raise ValueError(
            f"featurizer method {method!r} is already registered to "
            f"{FEATURIZER_CLASSES[method].__name__}"
        )
    FEATURIZER_CLASSES[method] = cls


def featurizer_class(method: str) -> type[Featurizer]:
    """Return the class registered for ``method``.

    Raises:
        ConfigError: no such method.
    """
    if method not in FEATURIZER_CLASSES:
        raise ConfigError(
            f"unknown featurizer method {method!r}; known: {sorted(FEATURIZER_CLASSES)}"
        )
    return FEATURIZER_CLASSES[method]


for _method, _cls in (
    ("noop", IdentityFeaturizer),
    ("full", IdentityFeaturizer),
    ("random", RotationFeaturizer),
    ("das", RotationFeaturizer),
    ("mdas", RotationFeaturizer),
    ("dbm", IdentityFeaturizer),
    ("mdbm", IdentityFeaturizer),
):
    register_featurizer(_method, _cls)


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
