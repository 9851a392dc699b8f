"""PCA featurizer: z-score each neuron, then rotate onto the principal components.

The features are all ``d_model`` principal components of the z-scored training vectors, so the
featurizer is a bijection (``unfeaturize(featurize(h)) == h`` up to float32 rounding). Which
components carry the target attribute is decided by an L1 logistic regression
(:mod:`ravel_bench.featurizers.selection`) and stored in the ``mask`` buffer.

The intervention is the shared :meth:`Featurizer.intervene`: the swap happens in feature space
and its effect is mapped back through ``unfeaturize`` (which undoes the z-score) before being
added to the base vector. The reference code added the normalized-space delta to the
*unnormalized* vector, so even a zero delta changed it; here ``intervene(h, h) == h`` exactly.
"""

# No `from __future__ import annotations` here: the Hub mixin reads the config annotation.
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ravel_bench.activations import AttributeActivations, collect_attribute_activations
from ravel_bench.data import EntityTypeRelease
from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer, FeaturizerConfig
from ravel_bench.featurizers.registry import register_featurizer
from ravel_bench.featurizers.selection import (
    SELECTION_C,
    select_attribute_features,
    site_config_fields,
)
from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)

# Neurons whose standard deviation is below this fraction of the largest are not rescaled.
_MIN_RELATIVE_STD = 1e-6


class PCAFeaturizer(Featurizer):
    """Z-score then principal components; a bijection of the residual stream.

    Buffers (all float32 except ``mask``):
        ``mean`` ``[d_model]`` and ``std`` ``[d_model]``: the z-score;
        ``components`` ``[n_features, d_model]``: orthonormal rows, the principal directions
        in z-scored space, by decreasing variance (``n_features == d_model``);
        ``variances`` ``[n_features]``: the variance along each component;
        ``mask`` bool ``[n_features]``: the components swapped.

    ``featurize(h) = ((h - mean) / std) @ components.T`` and
    ``unfeaturize(f) = (f @ components) * std + mean``.
    """

    def __init__(self, config: FeaturizerConfig) -> None:
        super().__init__(config)
        if config.n_features != config.d_model:
            raise ConfigError(
                f"pca featurizer: n_features={config.n_features} must equal "
                f"d_model={config.d_model} (all components are kept, so it is a bijection)"
            )
        d = config.d_model
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))  # ones, so an unfitted one divides safely
        self.register_buffer("components", torch.zeros(d, d))
        self.register_buffer("variances", torch.zeros(d))
        self.register_buffer("mask", torch.zeros(d, dtype=torch.bool))

    @property
    def feature_mask(self) -> torch.Tensor:
        return self.mask

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        z = (h - self.mean) / self.std  # [batch, d_model]
        return z @ self.components.T  # [batch, n_features]

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.components) * self.std + self.mean  # [batch, d_model]


@torch.no_grad()
def fit_pca(vectors: torch.Tensor, **config_fields) -> PCAFeaturizer:
    """Fit the z-score and all principal components of ``vectors``; nothing is masked yet.

    Computed in float64: the eigendecomposition of the z-scored covariance gives a complete
    orthonormal basis even with fewer rows than ``d_model``. Each component's sign is fixed so
    that its largest-magnitude entry is positive (the result is deterministic).

    Args:
        vectors: ``[rows, d_model]`` training vectors (at least 2 rows).
        config_fields: extra :class:`FeaturizerConfig` fields (``layer``, ``attribute``...).

    Returns:
        A :class:`PCAFeaturizer` on the CPU with ``k = 0`` (an empty mask).
    """
    rows, d_model = vectors.shape
    if rows < 2:
        raise ConfigError(f"PCA needs at least 2 vectors, got {rows}")
    x = vectors.detach().double()  # [rows, d_model]
    mean = x.mean(dim=0)  # [d_model]
    std = x.std(dim=0, correction=0)  # [d_model]
    std = torch.where(std > _MIN_RELATIVE_STD * std.max().clamp_min(1e-30), std, 1.0)
    z = (x - mean) / std  # [rows, d_model]
    covariance = z.T @ z / (rows - 1)  # [d_model, d_model]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending; columns
    components = eigenvectors.flip(-1).T  # [n_features, d_model], decreasing variance
    peak = components.abs().argmax(dim=1)  # [n_features]
    signs = torch.sign(components[torch.arange(d_model), peak])  # [n_features]
    components = components * signs[:, None]
    config = FeaturizerConfig(
        **{"method": "pca", "d_model": d_model, "n_features": d_model, "k": 0, **config_fields}
    )
    featurizer = PCAFeaturizer(config)
    featurizer.mean.copy_(mean.float().cpu())
    featurizer.std.copy_(std.float().cpu())
    featurizer.components.copy_(components.float().cpu())
    featurizer.variances.copy_(eigenvalues.flip(-1).clamp_min(0).float().cpu())
    explained = featurizer.variances.cumsum(0) / featurizer.variances.sum().clamp_min(1e-30)
    logger.info(
        "PCA fitted on %d vectors: first %d components explain 90%% of the variance",
        rows,
        int((explained < 0.9).sum()) + 1,
    )
    return featurizer


def train_pca(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instance: RavelInstance,
    release_type: EntityTypeRelease,
    attribute: str,
    layer: int,
    *,
    k: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    C: float = SELECTION_C,
    max_iter: int = 1000,
    activations: AttributeActivations | None = None,
    pca: PCAFeaturizer | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> PCAFeaturizer:
    """Fit PCA on the instance's train vectors and select the components carrying ``attribute``.

    Args:
        model, tokenizer: the instance's model (eval mode) and fast tokenizer.
        instance: the RAVEL instance; its train entities x kept train templates are the data.
        release_type: the release of the instance's entity type (the attribute labels).
        attribute: the target attribute.
        layer: the site (``-1`` = the stream entering block 0, else the block index).
        k: keep the ``k`` components with the largest L1 coefficients; ``None``: every
            component with a non-zero coefficient.
        seed: seed of the selection classifier.
        C: inverse L1 strength of the selection classifier.
        max_iter: iterations of the selection classifier.
        activations: reuse these train vectors instead of collecting them.
        pca: reuse this fitted PCA (it does not depend on the attribute) instead of fitting.
        cache_dir, batch_size: see :func:`ravel_bench.activations.collect_activations`.

    Returns:
        A :class:`PCAFeaturizer` whose config names the model, site, attribute and ``k``.
    """
    fields = site_config_fields(model, instance, attribute, layer, seed)
    if activations is None:
        activations = collect_attribute_activations(
            model,
            tokenizer,
            instance,
            release_type,
            layer,
            attributes=[attribute],
            cache_dir=cache_dir,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    if pca is None:
        pca = fit_pca(activations.vectors, **fields)
    labels, _ = activations.label_ids(attribute)
    # The config's seed stays the one that fitted the PCA/SAE.
    selection_fields = {k: v for k, v in fields.items() if k != "seed"}
    return select_attribute_features(
        pca, activations.vectors, labels, k=k, C=C, max_iter=max_iter, seed=seed, **selection_fields
    )


register_featurizer("pca", PCAFeaturizer)
