"""Pick the features that carry an attribute with an L1-regularized linear classifier.

PCA and SAE features are learned without labels; which of them carry the target attribute is
decided afterwards, as in RAVEL: a sparse (L1) logistic regression predicts the attribute's value
from the features, and the features with a non-zero coefficient for some class are kept (or the
``k`` with the largest ``max_class |coef|``). Features are divided by their standard deviation
first (not centered, so sparse SAE latents stay sparse), so that coefficients compare across
features of different scales; constant features get a zero coefficient.

The reference code used ``LinearSVC(penalty="l1")`` on unscaled features with a sweep over ``C``;
we use ``LogisticRegression`` (L1, ``saga``) on scaled features with one ``C``.
"""

import dataclasses
import logging
import warnings

import numpy as np
import scipy.sparse
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ravel_bench.engine.blocks import decoder_blocks, site_name
from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)

# Below this fraction of non-zeros the features are handed to scikit-learn as a sparse matrix.
_SPARSE_DENSITY = 0.3
# scikit-learn 1.8 deprecated `penalty`: an L1 penalty is `l1_ratio=1.0` from then on.
_SKLEARN_L1_RATIO = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
# Inverse L1 strength of the selection classifier; smaller keeps fewer features.
SELECTION_C = 0.1


def l1_classifier(C: float, max_iter: int, tol: float, seed: int) -> LogisticRegression:
    """Return an unfitted L1-penalized logistic regression (``saga``) for this scikit-learn."""
    penalty = {"l1_ratio": 1.0} if _SKLEARN_L1_RATIO else {"penalty": "l1"}
    return LogisticRegression(
        C=C, solver="saga", max_iter=max_iter, tol=tol, random_state=seed, **penalty
    )


def l1_feature_mask(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int | None = None,
    C: float = SELECTION_C,
    max_iter: int = 1000,
    tol: float = 1e-3,
    seed: int = 0,
) -> torch.Tensor:
    """Select the features an L1 logistic regression uses to predict ``labels``.

    Args:
        features: ``[rows, n_features]`` feature values.
        labels: ``[rows]`` class indices (at least two classes).
        k: keep the ``k`` features with the largest ``max over classes |coef|`` instead of every
            non-zero one (fewer if fewer are non-zero).
        C: inverse L1 strength; smaller keeps fewer features.
        max_iter, tol: ``saga`` stopping rule (non-convergence is logged, not raised).
        seed: ``random_state`` of ``saga``'s sample order.

    Returns:
        Bool ``[n_features]`` mask of the selected features.

    Raises:
        ConfigError: fewer than two classes, mismatched rows, or a bad ``k`` or ``C``.
    """
    rows, n_features = features.shape
    if labels.shape != (rows,):
        raise ConfigError(f"labels have shape {tuple(labels.shape)}; expected ({rows},)")
    if int(labels.unique().numel()) < 2:
        raise ConfigError("feature selection needs at least two attribute values among the rows")
    if k is not None and not 0 <= k <= n_features:
        raise ConfigError(f"k={k} must be in 0..n_features={n_features}")
    if C <= 0:
        raise ConfigError(f"C={C} must be > 0")
    x = features.detach().double().cpu()  # [rows, n_features]
    std = x.std(dim=0)  # [n_features]
    scale = torch.where(std > 1e-12, 1.0 / std.clamp_min(1e-12), torch.zeros_like(std))
    x = (x * scale).numpy()  # [rows, n_features]
    density = float(np.count_nonzero(x)) / max(x.size, 1)
    matrix = scipy.sparse.csr_matrix(x) if density < _SPARSE_DENSITY else x
    classifier = l1_classifier(C, max_iter, tol, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(matrix, labels.cpu().numpy())
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.info("L1 selection: saga stopped at max_iter=%d before tol=%g", max_iter, tol)
    importance = torch.from_numpy(np.abs(classifier.coef_).max(axis=0))  # [n_features]
    nonzero = importance > 0  # [n_features]
    if k is None:
        mask = nonzero
    else:
        order = torch.argsort(importance, descending=True, stable=True)[:k]
        mask = torch.zeros(n_features, dtype=torch.bool)
        mask[order] = True
        mask &= nonzero
    logger.info(
        "L1 selection: %d of %d features non-zero (C=%g, %d rows, %d classes), %d kept",
        int(nonzero.sum()),
        n_features,
        C,
        rows,
        len(classifier.classes_),
        int(mask.sum()),
    )
    if not mask.any():
        logger.warning("L1 selection kept no feature: the featurizer swaps nothing; raise C")
    return mask


def with_mask(featurizer: Featurizer, mask: torch.Tensor, **config_fields) -> Featurizer:
    """Return a copy of a masked featurizer with ``mask`` and ``config.k = mask.sum()``.

    The config is frozen, so a new featurizer of the same class is built from an updated config
    and given the old tensors. ``config_fields`` override other config fields (e.g. the
    ``attribute``).

    Args:
        featurizer: a featurizer with a bool ``mask`` buffer ``[n_features]``.
        mask: bool ``[n_features]``.

    Raises:
        ConfigError: the mask has the wrong shape.
    """
    n_features = featurizer.config.n_features
    if mask.shape != (n_features,):
        raise ConfigError(f"mask has shape {tuple(mask.shape)}; expected ({n_features},)")
    config = dataclasses.replace(featurizer.config, k=int(mask.sum()), **config_fields)
    new = type(featurizer)(config)
    state = {k: v.detach().clone() for k, v in featurizer.state_dict().items()}
    state["mask"] = mask.detach().clone().bool().to(state["mask"].device)
    new.load_state_dict(state, strict=True)
    return new.to(featurizer.mask.device).eval()


@torch.no_grad()
def select_attribute_features(
    featurizer: Featurizer,
    vectors: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int | None = None,
    C: float = SELECTION_C,
    max_iter: int = 1000,
    seed: int = 0,
    batch_size: int = 4096,
    **config_fields,
) -> Featurizer:
    """Featurize ``vectors`` and return a copy of ``featurizer`` masked to the selected features.

    Args:
        featurizer: a fitted featurizer with a ``mask`` buffer (PCA, SAE).
        vectors: ``[rows, d_model]`` hidden vectors.
        labels: ``[rows]`` class indices of the target attribute.
        k, C, max_iter, seed: see :func:`l1_feature_mask`.
        batch_size: rows featurized at a time.
        config_fields: config fields to set on the copy (``attribute``, ``seed``...).
    """
    device = featurizer.mask.device
    features = torch.cat(
        [
            featurizer.featurize(chunk.to(device).float()).cpu()
            for chunk in vectors.split(batch_size)
        ]
    )  # [rows, n_features]
    mask = l1_feature_mask(features, labels, k=k, C=C, max_iter=max_iter, seed=seed)
    return with_mask(featurizer, mask, **config_fields)


def site_config_fields(
    model: torch.nn.Module, instance: RavelInstance, attribute: str, layer: int, seed: int
) -> dict:
    """Return the :class:`FeaturizerConfig` fields naming a trained featurizer's model and site.

    Raises:
        ConfigError: ``attribute`` is not one of the instance's.
    """
    if attribute not in instance.attributes:
        raise ConfigError(
            f"attribute {attribute!r} is not in the instance; choose among {instance.attributes}"
        )
    return {
        "base_model": instance.metadata.get("model_id") or "",
        "base_model_revision": instance.metadata.get("model_revision"),
        "n_layers": len(decoder_blocks(model)),
        "layer": layer,
        "site": site_name(layer),
        "entity_type": instance.metadata.get("entity_type", ""),
        "attribute": attribute,
        "seed": seed,
    }
