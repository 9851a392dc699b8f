"""The one featurizer interface the engine uses, and its Hub-serializable config.

A featurizer maps a hidden vector to features (``featurize``), maps features back
(``unfeaturize``), and names the features that carry the target attribute (``feature_mask``).
The interchange intervention is written once, here::

    intervene(base, source) = base + U(mix) - U(F(base))    with mix = F(base) where not masked,
                                                                     F(source) where masked

i.e. the reconstruction error of the base vector is kept (``keep_reconstruction_error=True``, the
default). For a bijection this equals ``U(mix)``; for a projection (a k-direction rotation, an
SAE) it leaves the part of ``base`` outside the features untouched, and a zero delta returns the
input exactly: ``intervene(h, h) == h``. With ``keep_reconstruction_error=False`` the result is
``U(mix)`` (the reference SAE behaviour, which drops the error).

Every featurizer is an ``nn.Module`` and a ``huggingface_hub.PyTorchModelHubMixin``: its only
``__init__`` argument is a :class:`FeaturizerConfig` (saved as ``config.json``) and its tensors
are buffers or parameters saved to ``model.safetensors``. All computation is float32; the engine
casts model activations to float32 around the call.
"""

# No `from __future__ import annotations` here: the Hub mixin reads the config annotation.
from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ravel_bench import __version__
from ravel_bench.engine.blocks import site_name
from ravel_bench.errors import ConfigError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FeaturizerConfig:
    """Everything needed to rebuild a featurizer and check it against a model.

    Args:
        method: registry key, e.g. ``"das"``, ``"full"``.
        d_model: width of the residual stream the featurizer reads.
        n_features: number of features ``featurize`` returns.
        k: number of features swapped (rotation rows; mask size for neuron masks).
        base_model: id (Hub id or toy name) of the model it was trained on; ``""`` for baselines.
        base_model_revision: the base model's Hub revision, if known.
        n_layers: the base model's number of decoder blocks (0 if unknown).
        layer: intervention layer: ``-1`` = the stream entering block 0, else the block index.
        site: site name, ``blocks.{L}.resid_post`` (or ``blocks.0.resid_pre``).
        position: which token is intervened on; ``"entity_last"``.
        entity_type: RAVEL entity type it was trained for (``""`` if none).
        attribute: target attribute (``""`` if none).
        orientation: matrix layout; ``"rows"``: a ``[k, d_model]`` matrix whose rows are
            orthonormal directions.
        keep_reconstruction_error: add ``base - U(F(base))`` back after the swap.
        seed: seed of the random steps that made it.
        dtype: dtype of the stored tensors.
        ravel_bench_version: version that wrote it.
        schema_version: version of this config's layout.
    """

    method: str
    d_model: int
    n_features: int
    k: int
    base_model: str = ""
    base_model_revision: str | None = None
    n_layers: int = 0
    layer: int = -1
    site: str = ""
    position: str = "entity_last"
    entity_type: str = ""
    attribute: str = ""
    orientation: str = "rows"
    keep_reconstruction_error: bool = True
    seed: int = 0
    dtype: str = "float32"
    ravel_bench_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in ("d_model", "n_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FeaturizerConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.k <= self.n_features:
            raise ConfigError(
                f"FeaturizerConfig.k={self.k} must be in 0..n_features={self.n_features}"
            )
        if self.position != "entity_last":
            raise ConfigError(f"FeaturizerConfig.position={self.position!r}: only 'entity_last'")
        if self.orientation != "rows":
            raise ConfigError(f"FeaturizerConfig.orientation={self.orientation!r}: only 'rows'")
        if self.dtype != "float32":
            raise ConfigError(
                f"FeaturizerConfig.dtype={self.dtype!r}: featurizers store and compute float32"
            )
        if self.layer < -1 or self.n_layers < 0:
            raise ConfigError(
                f"FeaturizerConfig.layer={self.layer} must be >= -1 (the embeddings) and "
                f"n_layers={self.n_layers} >= 0 (0: unknown)"
            )
        if self.n_layers and self.layer >= self.n_layers:
            raise ConfigError(
                f"FeaturizerConfig.layer={self.layer} is not a block of a model with "
                f"n_layers={self.n_layers}"
            )
        if self.site and self.site != site_name(self.layer):
            raise ConfigError(
                f"FeaturizerConfig.site={self.site!r} does not name layer {self.layer} "
                f"({site_name(self.layer)!r})"
            )


class Featurizer(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="ravel-bench",
    tags=["ravel", "interpretability", "featurizer"],
    repo_url="https://github.com/explanare/ravel",
):
    """Base class of every featurizer.

    Subclasses create their tensors (zeros) from the config in ``__init__`` and implement
    :meth:`featurize`, :meth:`unfeaturize` and :attr:`feature_mask`.
    """

    def __init__(self, config: FeaturizerConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.config.d_model

    @property
    def feature_mask(self) -> torch.Tensor:
        """Bool ``[n_features]``: the features swapped from the source."""
        raise NotImplementedError

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        """Map hidden vectors ``[batch, d_model]`` to features ``[batch, n_features]``."""
        raise NotImplementedError

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        """Map features ``[batch, n_features]`` back to hidden vectors ``[batch, d_model]``."""
        raise NotImplementedError

    def check_tensors(self) -> None:
        """Raise :class:`ConfigError` if the loaded tensors contradict the config (called by
        :func:`ravel_bench.hub.load_featurizer` after loading); the base class checks nothing."""

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Swap the masked features of ``base`` for those of ``source``; ``[batch, d_model]``."""
        f_base = self.featurize(base)  # [batch, n_features]
        f_source = self.featurize(source)  # [batch, n_features]
        mixed = torch.where(self.feature_mask, f_source, f_base)  # [batch, n_features]
        if not self.config.keep_reconstruction_error:
            return self.unfeaturize(mixed)
        return base + (self.unfeaturize(mixed) - self.unfeaturize(f_base))
