"""RLAP: the subspace a relaxed linear adversarial probe removes (R-LACE, Ravfogel et al. 2022).

R-LACE ("Linear Adversarial Concept Erasure", ICML 2022) looks for the rank-``k`` orthogonal
projection whose removal makes a concept least linearly predictable::

    max over P in P_k   min over classifier theta   CE(theta(x (I - P)), y)

with ``P_k`` the rank-``k`` orthogonal projections. It relaxes ``P_k`` to its convex hull, the
Fantope ``F_k = {A symmetric : 0 <= A <= I, tr(A) = k}``, and alternates one gradient step of
the classifier (descent) with one projected gradient step of ``A`` (ascent, then the Euclidean
projection onto ``F_k``: clip the eigenvalues to ``[0, 1]`` after a shift found by bisection so
that they sum to ``k``). Every ``eval_every`` steps a fresh logistic-regression probe is fitted on
the data with the current rank-``k`` projection removed; the relaxed matrix whose probe has the
highest loss is kept, and training stops early once the probe is within ``epsilon`` of majority
accuracy. The result is rounded to the top-``k`` eigenvectors of the kept matrix.

As in RAVEL, the featurizer is the removed subspace itself: those ``k`` orthonormal directions
(a :class:`~ravel_bench.featurizers.baselines.RotationFeaturizer` with ``method="rlap"``,
``directions`` ``[k, d_model]``, rows orthonormal), all of them swapped.

Inputs are centered and divided by one global scale (so ``E ||x||^2 = d_model``); both keep
orthogonal projections orthogonal, so the directions apply to raw activations.
"""

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ravel_bench.activations import AttributeActivations, collect_attribute_activations
from ravel_bench.data import EntityTypeRelease
from ravel_bench.engine.blocks import hidden_size
from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.baselines import RotationFeaturizer
from ravel_bench.featurizers.registry import register_featurizer
from ravel_bench.featurizers.selection import site_config_fields
from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RLAPTrainConfig:
    """How to run the adversarial game.

    Args:
        steps: alternating (projection, classifier) steps at most (the reference ran up to
            75,000 with batch 128).
        batch_size: vectors per step.
        lr_projection: SGD learning rate of the relaxed projection.
        lr_classifier: SGD learning rate of the adversary's linear classifier.
        weight_decay: SGD weight decay of both players (reference: 1e-4).
        eval_every: steps between evaluations with a fresh probe.
        epsilon: stop once the probe's accuracy is within this of majority accuracy.
        probe_max_iter: L-BFGS iterations of the evaluation probe.
    """

    steps: int = 2000
    batch_size: int = 256
    lr_projection: float = 0.05
    lr_classifier: float = 0.05
    weight_decay: float = 1e-4
    eval_every: int = 200
    epsilon: float = 0.01
    probe_max_iter: int = 200

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "probe_max_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RLAPTrainConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("lr_projection", "lr_classifier"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RLAPTrainConfig.{name}={getattr(self, name)} must be > 0")
        if self.weight_decay < 0 or self.epsilon < 0:
            raise ConfigError("RLAPTrainConfig.weight_decay and epsilon must be >= 0")


def fantope_projection(a: torch.Tensor, k: int, iterations: int = 60) -> torch.Tensor:
    """Project a square matrix onto the Fantope ``{0 <= A <= I, tr(A) = k}`` (Frobenius norm).

    Args:
        a: ``[d_model, d_model]``; it is symmetrized first.
        k: the trace, ``1 <= k <= d_model``.
        iterations: bisection steps for the eigenvalue shift.

    Returns:
        ``[d_model, d_model]`` symmetric, eigenvalues in ``[0, 1]`` summing to ``k``.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh((a + a.T) / 2)  # [d], [d, d] columns
    # sum(clip(lambda - theta, 0, 1)) decreases from d (theta = min - 1) to 0 (theta = max).
    lo, hi = eigenvalues.min() - 1, eigenvalues.max()
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = (eigenvalues - mid).clamp(0, 1).sum() > k
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    clipped = (eigenvalues - (lo + hi) / 2).clamp(0, 1)  # [d]
    return (eigenvectors * clipped) @ eigenvectors.T  # [d_model, d_model]


def top_directions(a: torch.Tensor, k: int) -> torch.Tensor:
    """Return the top-``k`` eigenvectors of a symmetric matrix as orthonormal rows ``[k, d]``.

    Computed in float64; each row's sign makes its largest-magnitude entry positive.
    """
    _, eigenvectors = torch.linalg.eigh(a.double())  # ascending; columns
    rows = eigenvectors[:, -k:].flip(-1).T  # [k, d_model], by decreasing eigenvalue
    q, _ = torch.linalg.qr(rows.T)  # [d_model, k]: re-orthonormalize in float64
    rows = q.T  # [k, d_model]
    peak = rows.abs().argmax(dim=1)  # [k]
    signs = torch.sign(rows[torch.arange(k), peak])  # [k]
    return rows * signs[:, None]


def _probe(x: np.ndarray, y: np.ndarray, max_iter: int, seed: int) -> tuple[float, float]:
    """Fit an L2 logistic regression on ``x`` ``[rows, d]``; return (log loss, accuracy)."""
    probe = LogisticRegression(max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, y)
    return float(log_loss(y, probe.predict_proba(x), labels=probe.classes_)), float(
        probe.score(x, y)
    )


def probe_accuracy(
    vectors: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 200, seed: int = 0
) -> float:
    """Training accuracy of a logistic-regression probe of ``labels`` from ``vectors``.

    Args:
        vectors: ``[rows, d_model]``.
        labels: ``[rows]`` class indices.
    """
    x = vectors.detach().double().cpu()
    x = (x - x.mean(dim=0)).numpy()  # [rows, d_model]
    return _probe(x, labels.cpu().numpy(), max_iter, seed)[1]


def fit_rlap(
    vectors: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    train_config: RLAPTrainConfig = RLAPTrainConfig(),
    *,
    seed: int = 0,
    show_progress: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> torch.Tensor:
    """Run R-LACE and return the ``k`` directions of the removed subspace.

    Args:
        vectors: ``[rows, d_model]`` training vectors (any device; training runs there).
        labels: ``[rows]`` class indices of the attribute (at least two classes).
        k: rank of the removed subspace, ``1 <= k <= d_model``.
        train_config: see :class:`RLAPTrainConfig`.
        seed: seed of the initialization and of the batch order.
        on_log: called at each evaluation with ``{"step", "probe_loss", "probe_accuracy",
            "majority"}``.

    Returns:
        ``[k, d_model]`` float32 on the CPU, orthonormal rows.
    """
    rows, d_model = vectors.shape
    if not 1 <= k <= d_model:
        raise ConfigError(f"RLAP rank k={k} must be in 1..d_model={d_model}")
    if labels.shape != (rows,):
        raise ConfigError(f"labels have shape {tuple(labels.shape)}; expected ({rows},)")
    classes, y_all = labels.unique(return_inverse=True)
    n_classes = int(classes.numel())
    if n_classes < 2:
        raise ConfigError("RLAP needs at least two attribute values among the vectors")
    device = vectors.device
    x_all = vectors.detach().float()
    x_all = x_all - x_all.mean(dim=0)  # [rows, d_model]
    x_all = x_all / (x_all.pow(2).sum(dim=-1).mean() / d_model).sqrt().clamp_min(1e-12)
    y_all = y_all.to(device)
    x_np, y_np = x_all.double().cpu().numpy(), y_all.cpu().numpy()
    majority = float(np.bincount(y_np).max() / rows)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    init = 0.1 * torch.randn(d_model, d_model, generator=generator)
    projection = fantope_projection(init, k).to(device).requires_grad_(True)  # [d, d]
    classifier = nn.Linear(d_model, n_classes)
    with torch.no_grad():
        bound = 1 / d_model**0.5
        classifier.weight.uniform_(-bound, bound, generator=generator)
        classifier.bias.uniform_(-bound, bound, generator=generator)
    classifier = classifier.to(device)
    optimizer_p = torch.optim.SGD(
        [projection], lr=train_config.lr_projection, weight_decay=train_config.weight_decay
    )
    optimizer_c = torch.optim.SGD(
        classifier.parameters(),
        lr=train_config.lr_classifier,
        weight_decay=train_config.weight_decay,
    )
    eye = torch.eye(d_model, device=device)
    loss_fn = nn.CrossEntropyLoss()

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(rows, generator=generator)[: train_config.batch_size].to(device)
        return x_all[idx], y_all[idx]

    best, best_loss = projection.detach().clone(), -1.0
    progress = tqdm(range(train_config.steps), desc="RLAP game", disable=not show_progress)
    for step in progress:
        # The adversary: gradient ascent on the classifier's loss, then back onto the Fantope.
        x, y = batch()
        optimizer_p.zero_grad(set_to_none=True)
        (-loss_fn(classifier(x @ (eye - projection)), y)).backward()
        optimizer_p.step()
        with torch.no_grad():
            projection.copy_(fantope_projection(projection, k))
        # The classifier: gradient descent on the data with the relaxed projection removed.
        x, y = batch()
        optimizer_c.zero_grad(set_to_none=True)
        loss_fn(classifier(x @ (eye - projection.detach())), y).backward()
        optimizer_c.step()

        if (step + 1) % train_config.eval_every == 0 or step + 1 == train_config.steps:
            directions = top_directions(projection.detach().cpu(), k)  # [k, d_model] float64
            erased = x_np - (x_np @ directions.T.numpy()) @ directions.numpy()  # [rows, d]
            loss, accuracy = _probe(erased, y_np, train_config.probe_max_iter, seed)
            if loss > best_loss:
                best, best_loss = projection.detach().clone(), loss
            logs = {
                "step": step + 1,
                "probe_loss": loss,
                "probe_accuracy": accuracy,
                "majority": majority,
            }
            progress.set_postfix(acc=f"{accuracy:.3f}", majority=f"{majority:.3f}")
            logger.debug(
                "RLAP step %(step)d: probe loss %(probe_loss).4f acc %(probe_accuracy).3f", logs
            )
            if on_log is not None:
                on_log(logs)
            if abs(accuracy - majority) < train_config.epsilon:
                logger.debug("RLAP: probe at majority accuracy; stopping at step %d", step + 1)
                break
    directions = top_directions(best.cpu(), k).float()  # [k, d_model]
    logger.info(
        "RLAP fitted: rank %d, best probe loss %.4f (majority accuracy %.3f)",
        k,
        best_loss,
        majority,
    )
    return directions


def train_rlap(
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
    train_config: RLAPTrainConfig = RLAPTrainConfig(),
    activations: AttributeActivations | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> RotationFeaturizer:
    """Run R-LACE on the instance's train vectors and return the removed subspace.

    Args:
        model, tokenizer: the instance's model (eval mode) and fast tokenizer.
        instance: the RAVEL instance; its train entities x kept train templates are the data.
        release_type: the release of the instance's entity type (the attribute labels).
        attribute: the target attribute.
        layer: the site (``-1`` = the stream entering block 0, else the block index).
        k: rank of the subspace; ``None``: ``max(1, d_model // 32)`` (DAS's smaller default).
        seed: seed of the game.
        train_config: see :class:`RLAPTrainConfig`.
        activations: reuse these train vectors instead of collecting them.
        cache_dir, batch_size: see :func:`ravel_bench.activations.collect_activations`.
        on_log: see :func:`fit_rlap`.

    Returns:
        A :class:`RotationFeaturizer` (``method="rlap"``) with ``[k, d_model]`` directions.
    """
    fields = site_config_fields(model, instance, attribute, layer, seed)
    k = k if k is not None else max(1, hidden_size(model) // 32)
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
    labels, _ = activations.label_ids(attribute)
    device = next(model.parameters()).device
    directions = fit_rlap(
        activations.vectors.to(device),
        labels,
        k,
        train_config,
        seed=seed,
        show_progress=show_progress,
        on_log=on_log,
    )
    return RotationFeaturizer.from_directions(directions, method="rlap", **fields)


register_featurizer("rlap", RotationFeaturizer)
