"""Convert between ravel-bench's rotation matrix and pyvene's low-rank rotation weight.

ravel-bench stores DAS/MDAS directions as ``[k, d_model]`` with orthonormal **rows** and
intervenes with ``base + ((source - base) @ R.T) @ R``. pyvene's ``LowRankRotateLayer`` holds a
``[d_model, k]`` weight ``W`` with orthonormal **columns** and ``LowRankRotatedSpaceIntervention``
computes ``base + ((source @ W) - (base @ W)) @ W.T``. So ``W = R.T``. This module imports no
pyvene, so the conversion is tested without the bench extra.
"""

import torch


def pyvene_weight(directions: torch.Tensor) -> torch.Tensor:
    """Return pyvene's ``[d_model, k]`` weight for ``[k, d_model]`` directions (rows).

    Raises:
        ValueError: ``directions`` is not a 2-D matrix with at most ``d_model`` rows.

    Example:
        >>> pyvene_weight(torch.eye(2, 3)).shape
        torch.Size([3, 2])
    """
    if directions.dim() != 2 or directions.shape[0] > directions.shape[1]:
        raise ValueError(
            f"expected [k, d_model] directions with k <= d_model, found {tuple(directions.shape)}"
        )
    return directions.T.contiguous()  # [d_model, k]


def directions_from_pyvene(weight: torch.Tensor) -> torch.Tensor:
    """Return ``[k, d_model]`` directions for pyvene's ``[d_model, k]`` weight (the inverse)."""
    if weight.dim() != 2 or weight.shape[1] > weight.shape[0]:
        raise ValueError(
            f"expected a [d_model, k] pyvene weight with k <= d_model, found {tuple(weight.shape)}"
        )
    return weight.T.contiguous()  # [k, d_model]


def low_rank_intervene(
    base: torch.Tensor, source: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """pyvene's low-rank rotated-space interchange, written out: ``[batch, d_model]``."""
    return base + ((source @ weight) - (base @ weight)) @ weight.T
