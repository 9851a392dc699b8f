"""The one featurizer interface the engine uses.

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

All computation is float32; the engine casts model activations to float32 around the call.
"""

import torch
from torch import nn


class Featurizer(nn.Module):
    """Base class of every featurizer.

    Subclasses implement :meth:`featurize`, :meth:`unfeaturize` and :attr:`feature_mask`.

    Args:
        d_model: width of the residual stream.
        keep_reconstruction_error: add ``base - U(F(base))`` back after the swap.
    """

    def __init__(self, d_model: int, keep_reconstruction_error: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.keep_reconstruction_error = keep_reconstruction_error

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

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Swap the masked features of ``base`` for those of ``source``; ``[batch, d_model]``."""
        f_base = self.featurize(base)  # [batch, n_features]
        f_source = self.featurize(source)  # [batch, n_features]
        mixed = torch.where(self.feature_mask, f_source, f_base)  # [batch, n_features]
        if not self.keep_reconstruction_error:
            return self.unfeaturize(mixed)
        return base + (self.unfeaturize(mixed) - self.unfeaturize(f_base))
