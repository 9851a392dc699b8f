"""Sparse autoencoder featurizer: ReLU latents, trained on reconstruction + L1, then selected.

``featurize(h) = relu((h - b_dec) @ W_enc.T + b_enc)`` and ``unfeaturize(f) = f @ W_dec.T +
b_dec``. The SAE is **not** a bijection: ``unfeaturize(featurize(h)) != h``. With
``config.keep_reconstruction_error=True`` (our default) the shared :meth:`Featurizer.intervene`
adds the base's reconstruction error back, so a swap only moves the base along the selected
latents' decoder directions and ``intervene(h, h) == h`` exactly. With ``False`` the result is
the decoded mix, as in the reference code, which also loses everything the SAE fails to
reconstruct.

Training (:func:`fit_sae`): inputs are centered and scaled so that their mean squared norm is 1
(the scale is folded into the weights afterwards, so the saved SAE reads raw activations); the
loss is ``mean ||x - x_hat||^2 + l1_coefficient * mean sum_i f_i ||W_dec[:, i]||`` (the L1 on
latents weighted by decoder norms, which removes the shrink-latents/grow-decoder loophole);
AdamW on shuffled mini-batches drawn with a seeded ``torch.Generator``. Which latents carry the
attribute is then decided by an L1 logistic regression
(:mod:`ravel_bench.featurizers.selection`).
"""

# No `from __future__ import annotations` here: the Hub mixin reads the config annotation.
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
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


class SAEFeaturizer(Featurizer):
    """A ReLU sparse autoencoder; features are its latents.

    Parameters (float32): ``W_enc`` ``[n_features, d_model]``, ``b_enc`` ``[n_features]``,
    ``W_dec`` ``[d_model, n_features]``, ``b_dec`` ``[d_model]``. Buffer: ``mask`` bool
    ``[n_features]``, the latents swapped.
    """

    def __init__(self, config: FeaturizerConfig) -> None:
        super().__init__(config)
        d, n = config.d_model, config.n_features
        self.W_enc = nn.Parameter(torch.zeros(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.zeros(d, n))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.zeros(n, dtype=torch.bool))

    @property
    def feature_mask(self) -> torch.Tensor:
        return self.mask

    def featurize(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu((h - self.b_dec) @ self.W_enc.T + self.b_enc)  # [batch, n_features]

    def unfeaturize(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec.T + self.b_dec  # [batch, d_model]


@dataclass(frozen=True)
class SAETrainConfig:
    """How to train a sparse autoencoder.

    Args:
        expansion: latents per residual dimension (``n_features = expansion * d_model``; the
            reference used 4).
        l1_coefficient: weight of the L1 term; inputs have mean squared norm 1, so it is
            unit-free (a latent whose contribution to the input's norm is below about half of
            it is pushed to 0).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        steps: optimizer steps.
        batch_size: vectors per step.
        log_every: steps between ``on_log`` calls (the only ``.item()`` syncs).
    """

    expansion: int = 4
    l1_coefficient: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 2000
    batch_size: int = 256
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("expansion", "steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SAETrainConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("l1_coefficient", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SAETrainConfig.{name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"SAETrainConfig.lr={self.lr} must be > 0")


def sae_loss(sae: SAEFeaturizer, x: torch.Tensor, l1_coefficient: float) -> dict[str, torch.Tensor]:
    """Return the training loss terms on a batch ``x`` ``[batch, d_model]`` (0-dim tensors).

    Keys: ``loss`` = ``mse + l1_coefficient * l1``; ``mse`` = mean squared reconstruction
    error summed over ``d_model``; ``l1`` = mean of ``sum_i f_i ||W_dec[:, i]||``; ``l0`` =
    mean number of active latents.
    """
    f = sae.featurize(x)  # [batch, n_features]
    x_hat = sae.unfeaturize(f)  # [batch, d_model]
    mse = (x_hat - x).pow(2).sum(dim=-1).mean()
    l1 = (f * sae.W_dec.norm(dim=0)).sum(dim=-1).mean()
    l0 = (f > 0).float().sum(dim=-1).mean()
    return {"loss": mse + l1_coefficient * l1, "mse": mse, "l1": l1, "l0": l0}


def fit_sae(
    vectors: torch.Tensor,
    train_config: SAETrainConfig = SAETrainConfig(),
    *,
    n_features: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
    **config_fields,
) -> SAEFeaturizer:
    """Train a sparse autoencoder on ``vectors``; nothing is masked yet.

    Deterministic for a given seed, device and input: the initialization and the batch order
    come from one ``torch.Generator``.

    Args:
        vectors: ``[rows, d_model]`` training vectors (any device; training runs there).
        train_config: see :class:`SAETrainConfig`.
        n_features: number of latents; ``None``: ``train_config.expansion * d_model``.
        seed: seed of the initialization and of the batch order.
        on_log: called every ``train_config.log_every`` steps (and after the last) with
            ``{"step", "loss", "mse", "l1", "l0"}`` on the normalized inputs.
        config_fields: extra :class:`FeaturizerConfig` fields (``layer``,
            ``keep_reconstruction_error``...).

    Returns:
        An :class:`SAEFeaturizer` on ``vectors``' device, in eval mode, with ``k = 0``.
    """
    rows, d_model = vectors.shape
    if rows < 2:
        raise ConfigError(f"an SAE needs at least 2 training vectors, got {rows}")
    n_features = n_features or train_config.expansion * d_model
    config = FeaturizerConfig(
        **{
            "method": "sae",
            "d_model": d_model,
            "n_features": n_features,
            "k": 0,
            "seed": seed,
            **config_fields,
        }
    )
    device = vectors.device
    x_all = vectors.detach().float()  # [rows, d_model]
    mean = x_all.mean(dim=0)  # [d_model]
    # Train on x' = (x - mean) * scale + mean * scale with E||x' - mean'||^2 = 1.
    scale = 1.0 / (x_all - mean).pow(2).sum(dim=-1).mean().sqrt().clamp_min(1e-12)
    x_all = x_all * scale  # [rows, d_model]

    generator = torch.Generator(device="cpu").manual_seed(seed)
    sae = SAEFeaturizer(config)
    with torch.no_grad():
        # Decoder columns: random unit vectors; encoder: their transpose; b_dec: the data mean.
        w_dec = torch.randn(d_model, n_features, generator=generator)  # [d_model, n_features]
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.copy_((mean * scale).cpu())
    sae = sae.to(device).train()
    optimizer = torch.optim.AdamW(
        sae.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    order = torch.randperm(rows, generator=generator)
    cursor = 0
    progress = tqdm(range(train_config.steps), desc="SAE training", disable=not show_progress)
    for step in progress:
        if cursor + train_config.batch_size > rows and cursor > 0:  # start a new epoch
            order, cursor = torch.randperm(rows, generator=generator), 0
        rows_idx = order[cursor : cursor + train_config.batch_size]
        cursor += train_config.batch_size
        terms = sae_loss(sae, x_all[rows_idx.to(device)], train_config.l1_coefficient)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if (step + 1) % train_config.log_every == 0 or step + 1 == train_config.steps:
            logs = {"step": step + 1, **{k: v.item() for k, v in terms.items()}}  # sync point
            progress.set_postfix(loss=f"{logs['loss']:.4f}", l0=f"{logs['l0']:.1f}")
            logger.debug("SAE step %(step)d: loss %(loss).4f mse %(mse).4f l0 %(l0).1f", logs)
            if on_log is not None:
                on_log(logs)
    with torch.no_grad():
        # Fold the input scale into the weights so the SAE reads and writes raw activations.
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
        final = sae_loss(sae, vectors.detach().float(), 0.0)
        variance = (vectors.detach().float() - mean).pow(2).sum(dim=-1).mean()
    logger.info(
        "SAE trained: %d latents, %d steps, fraction of variance unexplained %.3f, L0 %.1f",
        n_features,
        train_config.steps,
        float(final["mse"] / variance.clamp_min(1e-30)),
        float(final["l0"]),
    )
    return sae.eval()


def train_sae(
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
    train_config: SAETrainConfig = SAETrainConfig(),
    n_features: int | None = None,
    keep_reconstruction_error: bool = True,
    C: float = SELECTION_C,
    max_iter: int = 1000,
    activations: AttributeActivations | None = None,
    sae: SAEFeaturizer | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> SAEFeaturizer:
    """Train an SAE on the instance's train vectors and select the latents carrying ``attribute``.

    Args:
        model, tokenizer: the instance's model (eval mode) and fast tokenizer.
        instance: the RAVEL instance; its train entities x kept train templates are the data.
        release_type: the release of the instance's entity type (the attribute labels).
        attribute: the target attribute.
        layer: the site (``-1`` = the stream entering block 0, else the block index).
        k: keep the ``k`` latents with the largest L1 coefficients; ``None``: every latent with
            a non-zero coefficient.
        seed: seed of the SAE training and of the selection classifier.
        train_config: see :class:`SAETrainConfig`.
        n_features: number of latents; ``None``: ``train_config.expansion * d_model``.
        keep_reconstruction_error: ``True`` (ours) adds the base's reconstruction error back
            after the swap; ``False`` is the reference behaviour.
        C, max_iter: the selection classifier's inverse L1 strength and iterations.
        activations: reuse these train vectors instead of collecting them.
        sae: reuse this trained SAE (it does not depend on the attribute) instead of training.
        cache_dir, batch_size: see :func:`ravel_bench.activations.collect_activations`.
        on_log: see :func:`fit_sae`.

    Returns:
        An :class:`SAEFeaturizer` whose config names the model, site, attribute and ``k``.
    """
    fields = site_config_fields(model, instance, attribute, layer, seed)
    fields["keep_reconstruction_error"] = keep_reconstruction_error
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
    if sae is None:
        device = next(model.parameters()).device
        sae = fit_sae(
            activations.vectors.to(device),
            train_config,
            n_features=n_features,
            show_progress=show_progress,
            on_log=on_log,
            **fields,
        )
    labels, _ = activations.label_ids(attribute)
    # The config's seed stays the one that fitted the PCA/SAE.
    selection_fields = {k: v for k, v in fields.items() if k != "seed"}
    selected = select_attribute_features(
        sae, activations.vectors, labels, k=k, C=C, max_iter=max_iter, seed=seed, **selection_fields
    )
    return selected.cpu()


register_featurizer("sae", SAEFeaturizer)
