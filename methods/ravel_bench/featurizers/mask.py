"""DBM and MDBM: a learned binary mask over neurons (differential binary masking).

Training uses a soft mask ``sigmoid(logits / temperature)`` with the temperature annealed
geometrically from ``temperature_start`` to ``temperature_end``, and an L1 penalty on the mask.
Evaluation uses the **hard** mask ``logits > 0`` (the reference kept the soft mask at evaluation;
we do not): the trained featurizer is an
:class:`~ravel_bench.featurizers.baselines.IdentityFeaturizer` with a bool mask.
"""

import torch
from torch import nn

from ravel_bench.featurizers.baselines import IdentityFeaturizer


class TrainableMask(nn.Module):
    """A soft neuron mask, trainable.

    Args:
        d_model: width of the residual stream.
        l1_coefficient: weight of the mean mask value in the loss.
        temperature_start, temperature_end: the annealing schedule's ends.
        init_logit: initial logit of every neuron (0: mask 0.5).
        max_features: keep at most this many neurons in the hard mask, those with the largest
            logits (ties broken by the lower index); ``None``: every neuron with a positive logit.
    """

    def __init__(
        self,
        d_model: int,
        l1_coefficient: float = 1e-2,
        temperature_start: float = 1.0,
        temperature_end: float = 0.01,
        init_logit: float = 0.0,
        max_features: int | None = None,
    ) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((d_model,), init_logit))
        self.l1_coefficient = l1_coefficient
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        self.temperature = temperature_start
        self.max_features = max_features

    def set_progress(self, fraction: float) -> None:
        """Anneal the temperature: ``fraction`` of training done, in [0, 1]."""
        ratio = self.temperature_end / self.temperature_start
        self.temperature = self.temperature_start * ratio ** min(max(fraction, 0.0), 1.0)

    def soft_mask(self) -> torch.Tensor:
        """``[d_model]`` values in (0, 1)."""
        return torch.sigmoid(self.logits / self.temperature)

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``base + m * (source - base)`` with the soft mask; ``[batch, d_model]``."""
        return base + self.soft_mask() * (source - base)

    def regularization(self) -> torch.Tensor:
        """L1 penalty: ``l1_coefficient * mean(mask)`` (the reference uses the sum, so its
        coefficient ``c`` is ``c * d_model`` here)."""
        return self.l1_coefficient * self.soft_mask().mean()

    def hard_mask(self) -> torch.Tensor:
        """Bool ``[d_model]``: the neurons swapped at evaluation (``logit > 0``, at most
        ``max_features`` of them)."""
        logits = self.logits.detach()
        mask = logits > 0
        if self.max_features is not None and int(mask.sum()) > self.max_features:
            top = torch.argsort(logits, descending=True, stable=True)[: self.max_features]
            mask = torch.zeros_like(mask)
            mask[top] = True
        return mask

    def export(self, method: str, **config) -> IdentityFeaturizer:
        """The trained featurizer with the hard mask."""
        return IdentityFeaturizer.from_mask(self.hard_mask(), method=method, **config)
