"""DAS and MDAS: k orthonormal directions learned with counterfactual cross entropy.

During training the directions are an orthogonal parametrization of a ``[k, d_model]`` matrix
(``torch.nn.utils.parametrizations.orthogonal``: rows stay orthonormal at every step, materialized
once per step with ``parametrize.cached()``). The trained featurizer is saved as a
:class:`~ravel_bench.featurizers.baselines.RotationFeaturizer` holding the materialized matrix,
rows = directions, shape ``[k, d_model]``.
"""

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ravel_bench.featurizers.baselines import RotationFeaturizer


class TrainableRotation(nn.Module):
    """k orthonormal directions in a d_model space, trainable.

    Args:
        d_model: width of the residual stream.
        k: number of directions.
        generator: seeds the initial directions.
    """

    def __init__(self, d_model: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten just below
            self.proj = nn.Linear(d_model, k, bias=False)
        with torch.no_grad():
            init = torch.randn(d_model, k, generator=generator, dtype=torch.float64)
            q, _ = torch.linalg.qr(init)  # [d_model, k]
            self.proj.weight.copy_(q.T.float())
        # The parametrization completes the k rows to a square orthogonal base with random
        # columns drawn from the global generator: seed it here, and leave global state as it was.
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            parametrizations.orthogonal(self.proj)

    @property
    def directions(self) -> torch.Tensor:
        """``[k, d_model]`` with orthonormal rows."""
        return self.proj.weight

    def intervene(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``base + ((source - base) @ R.T) @ R``; ``[batch, d_model]``."""
        r = self.directions  # [k, d_model]
        return base + ((source - base) @ r.T) @ r

    def regularization(self) -> torch.Tensor:
        """No extra loss term: a zero on the directions' device (one made on the CPU would be
        copied to the GPU every step, and a plain copy waits for the GPU)."""
        return next(self.parameters()).new_zeros(())

    def export(self, method: str, **config) -> RotationFeaturizer:
        """The trained featurizer with the materialized ``[k, d_model]`` matrix."""
        with torch.no_grad():
            return RotationFeaturizer.from_directions(
                self.directions.detach().clone(), method, **config
            )
