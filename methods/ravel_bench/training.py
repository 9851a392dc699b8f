"""Train intervention featurizers (DAS, MDAS, DBM, MDBM) with counterfactual cross entropy.

The model is frozen. For each training pair, the source vector (residual stream at the source
entity's last token, layer L) is computed once; the base prompt is then run with the trainable
intervention at the base entity's last token, the target label is teacher-forced after the
prompt, and the loss is the cross entropy on the label's first 3 tokens (tokenized in context).

- DAS and DBM train on **cause** pairs of the target attribute A only (target ``inv_label``).
- MDAS and MDBM mix cause pairs of A with **isolate** pairs of every other attribute (target
  ``label``: the base output must not change). The reference balance is 20000 cause + 5000 per
  other attribute; here ``max_cause_examples`` caps the cause pairs and each other attribute gets
  ``isolate_ratio`` (0.25) times as many isolate pairs, sampled with a seeded generator. Cause and
  isolate examples are shuffled together, so batches are mixed.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ravel_bench.engine.blocks import decoder_blocks, hidden_size, site_name
from ravel_bench.engine.generation import forward_kwargs, position_ids_from_mask
from ravel_bench.engine.hooks import patch_first_pass
from ravel_bench.engine.interchange import model_device, source_vectors
from ravel_bench.engine.positions import encode_rows, encode_with_entity_span
from ravel_bench.engine.prefix import PrefixTable, build_prefix_table, rest_inputs, split_before
from ravel_bench.engine.transfer import batch_to_device, to_device
from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.featurizers.mask import TrainableMask
from ravel_bench.featurizers.rotation import TrainableRotation
from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)

INTERVENTION_METHODS = ("das", "mdas", "dbm", "mdbm")
MULTITASK = {"mdas", "mdbm"}
LABEL_TOKENS = 3
IGNORE_INDEX = -100  # cross-entropy target of positions that are no label token


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters of the intervention methods.

    Args:
        method: ``das``, ``mdas``, ``dbm`` or ``mdbm``.
        k: number of directions (DAS, MDAS); ignored by the masks.
        lr: AdamW learning rate. 3e-3 was chosen on the embedded model's val split (the best
            mean Disentangle of DAS and MDAS among 1e-3, 3e-3 and 1e-2; DBM and MDBM were flat
            across the three; ``experiments/README.md``). The reference used 1e-4 on
            Llama-2-7b with up to 20000 examples x 3 epochs.
        batch_size: examples per step (reference 16).
        epochs: passes over the examples (reference 3).
        max_cause_examples: cap on cause examples of the target (reference 20000).
        isolate_ratio: isolate examples per other attribute, relative to the number of cause
            examples (reference 5000 / 20000 = 0.25); multi-task methods only.
        l1_coefficient: weight of the mask's L1 penalty (DBM, MDBM), on the *mean* mask value.
            The reference's term is ``coefficient * sum(mask)`` (the L1 norm): its
            coefficient c is ``c * d_model`` here.
        max_features: keep at most this many neurons in the evaluated mask (DBM, MDBM), those
            with the largest logits; ``None`` (the default): every neuron the mask keeps.
        temperature_start, temperature_end: mask temperature schedule (DBM, MDBM).
        seed: seeds initialization, sampling and shuffling.
        log_every: steps between loss syncs (``.item()``) for logging.
    """

    method: str = "mdas"
    k: int = 8
    lr: float = 3e-3
    batch_size: int = 16
    epochs: int = 3
    max_cause_examples: int = 20000
    isolate_ratio: float = 0.25
    l1_coefficient: float = 1e-2
    max_features: int | None = None
    temperature_start: float = 1.0
    temperature_end: float = 0.01
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.method not in INTERVENTION_METHODS:
            raise ConfigError(
                f"TrainConfig.method={self.method!r}; expected one of {INTERVENTION_METHODS}"
            )
        for name in ("k", "batch_size", "epochs", "max_cause_examples", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainConfig.lr={self.lr} must be a positive number")
        if self.max_features is not None and self.max_features < 1:
            raise ConfigError(f"TrainConfig.max_features={self.max_features} must be >= 1")
        if self.isolate_ratio < 0:
            raise ConfigError(f"TrainConfig.isolate_ratio={self.isolate_ratio} must be >= 0")
        if not (self.l1_coefficient >= 0 and math.isfinite(self.l1_coefficient)):
            raise ConfigError(
                f"TrainConfig.l1_coefficient={self.l1_coefficient} must be a number >= 0"
            )


@dataclass(frozen=True)
class Example:
    """One training row: the base prompt, the source prompt and the label to teacher-force."""

    base_template: str
    entity: str
    source_template: str
    source_entity: str
    target: str
    kind: str  # "cause" or "isolate"


def training_examples(
    instance: RavelInstance, attribute: str, config: TrainConfig
) -> list[Example]:
    """Select and balance the training examples for target ``attribute`` (train/train pairs).

    Raises:
        ConfigError: the instance has no train pair querying ``attribute``.
    """
    pairs = instance.split("train", "train")
    generator = torch.Generator().manual_seed(config.seed)

    def sample(rows: list[dict], n: int) -> list[dict]:
        if len(rows) <= n:
            return rows
        keep = torch.randperm(len(rows), generator=generator)[:n].sort().values
        return [rows[i] for i in keep.tolist()]

    cause_rows = sample(
        [p for p in pairs if p["attribute"] == attribute], config.max_cause_examples
    )
    if not cause_rows:
        raise ConfigError(
            f"the instance has no train pairs querying {attribute!r}; attributes with pairs: "
            f"{sorted({p['attribute'] for p in pairs})}"
        )
    examples = [
        Example(
            p["base_template"],
            p["entity"],
            p["source_template"],
            p["source_entity"],
            p["inv_label"],
            "cause",
        )
        for p in cause_rows
    ]
    if config.method in MULTITASK:
        n_isolate = round(config.isolate_ratio * len(cause_rows))
        for other in sorted({p["attribute"] for p in pairs} - {attribute}):
            rows = sample([p for p in pairs if p["attribute"] == other], n_isolate)
            examples += [
                Example(
                    p["base_template"],
                    p["entity"],
                    p["source_template"],
                    p["source_entity"],
                    p["label"],
                    "isolate",
                )
                for p in rows
            ]
    return examples


def teacher_forced_batch(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    n_label_tokens: int = LABEL_TOKENS,
    *,
    return_starts: bool = False,
) -> (
    tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]
    | tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]
):
    """Tokenize ``prompt + target`` (left-padded) and mark the target's first tokens.

    Returns:
        ``(batch, positions, label_mask)``: ``batch`` has ``input_ids``/``attention_mask``
        ``[batch, pos]``; ``positions`` ``[batch]`` the base entity's last token;
        ``label_mask`` bool ``[batch, pos]`` marks the target tokens (at most
        ``n_label_tokens`` per row) that the loss predicts. With ``return_starts``, the base
        entity's first token ``[batch]`` comes fourth.
    """
    templates = [e.base_template for e in examples]
    entities = [e.entity for e in examples]
    batch, starts, positions, offsets = encode_with_entity_span(
        tokenizer, templates, entities, [e.target for e in examples]
    )
    prompt_len = torch.tensor([len(t % e) for t, e in zip(templates, entities, strict=True)])
    ends = offsets[..., 1]  # [batch, pos]
    is_label = (
        batch["attention_mask"].bool() & (ends > prompt_len[:, None]) & (ends > offsets[..., 0])
    )
    label_mask = is_label & (is_label.long().cumsum(dim=1) <= n_label_tokens)  # [batch, pos]
    missing = ~label_mask.any(dim=1)  # [batch]: rows with nothing to predict
    if missing.any():
        e = examples[int(missing.nonzero()[0, 0])]
        raise DataFormatError(
            f"training example ({e.base_template!r} % {e.entity!r}) has target {e.target!r}, "
            "which gives no token after the prompt to train on",
            hint="rebuild the instance: its labels must be non-empty",
        )
    if return_starts:
        return batch, positions, label_mask, starts
    return batch, positions, label_mask


def _counterfactual_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    positions: torch.Tensor,
    label_mask: torch.Tensor,
    layer: int,
    edit: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor | None = None,
    table: PrefixTable | None = None,
) -> torch.Tensor:
    """Mean cross entropy of the label tokens after the intervened prompt.

    ``batch``, ``positions``, ``label_mask`` and ``starts`` are host (CPU) tensors, as
    :func:`teacher_forced_batch` returns them: everything that needs their values (the prefix
    cut, the logits to keep) is decided on the host, and they are queued to the model's device
    without waiting for it, so a training step has no host-device synchronization before its
    loss is read.

    With ``starts`` (each row's entity's first token) and a ``table`` of prefixes run once for
    the whole training, rows whose prefix is in the table run only from the entity on, on top of
    the cached prefix (only that part is differentiated; :mod:`ravel_bench.engine.prefix`); the
    other rows run whole. The loss is the same.
    """
    device = model_device(model)
    cache = None
    split = (
        split_before(batch, starts, known=table)
        if starts is not None and table is not None
        else None
    )
    if split is not None:
        cache, prefix_mask = table.select(split.keys)
        inputs = rest_inputs(batch_to_device(split.rest, device), prefix_mask)
        positions = positions - split.shift
        label_mask = label_mask[:, split.shift :]
    else:
        inputs = batch_to_device(
            {**batch, "position_ids": position_ids_from_mask(batch["attention_mask"])}, device
        )
    # Targets are suffixes of left-padded rows: only the last `keep` positions need logits.
    first_label = int(label_mask.float().argmax(dim=1).min())  # earliest target token (host)
    keep = min(label_mask.shape[1] - first_label + 1, label_mask.shape[1])
    # Positions that are no target are ignored by the loss (no boolean indexing: it would make
    # the host wait for the device to count the selected rows).
    targets = inputs["input_ids"][:, -keep + 1 :].masked_fill(
        ~to_device(label_mask[:, -keep + 1 :], device), IGNORE_INDEX
    )  # [batch, keep - 1]
    cache_kw, extra = forward_kwargs(model)
    with patch_first_pass(model, layer, to_device(positions, device), edit):
        out = model(
            **inputs,
            use_cache=cache is not None,
            **({} if cache is None else {cache_kw: cache}),
            **({"logits_to_keep": keep} if extra else {}),
        )
    logits = out.logits[:, -keep:-1]  # [batch, keep - 1, vocab]: predictions of the last keep - 1
    return nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )


def train_intervention(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instance: RavelInstance,
    attribute: str,
    layer: int,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen
    *,
    show_progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    model_id: str = "",
    model_revision: str | None = None,
) -> tuple[Featurizer, list[dict]]:
    """Train one DAS/MDAS/DBM/MDBM featurizer for target ``attribute`` at ``layer``.

    Args:
        model, tokenizer: the frozen instance model (its parameters are not updated; it is put
            in eval mode).
        instance: the model's instance; its ``train`` pairs are the data.
        attribute: the target attribute A.
        layer: intervention site (``-1`` embeddings, else block index).
        config: hyperparameters.
        on_log: called with ``{"step", "epoch", "loss"}`` every ``log_every`` steps.
        model_id, model_revision: recorded in the featurizer's config.

    Returns:
        ``(featurizer, history)``: the trained featurizer (hard mask or materialized
        directions) and the logged losses.
    """
    examples = training_examples(instance, attribute, config)
    device = model_device(model)
    d_model = hidden_size(model)
    generator = torch.Generator().manual_seed(config.seed)
    if config.method in ("das", "mdas"):
        if config.k > d_model:
            raise ConfigError(f"k={config.k} is larger than d_model={d_model}")
        trainable: nn.Module = TrainableRotation(d_model, config.k, generator)
    else:
        trainable = TrainableMask(
            d_model,
            config.l1_coefficient,
            config.temperature_start,
            config.temperature_end,
            max_features=config.max_features,
        )
    trainable = trainable.to(device)
    model.requires_grad_(False)
    model.eval()  # frozen: no dropout in the passes the loss is computed on
    source = source_vectors(
        model,
        tokenizer,
        [e.source_template for e in examples],
        [e.source_entity for e in examples],
        layer,
        show_progress=show_progress,
    ).float()  # [examples, d_model]
    # The base prompts' prefixes before the entity, run once for the whole training.
    encoded = encode_rows(
        tokenizer, [e.base_template for e in examples], [e.entity for e in examples]
    )
    table = build_prefix_table(
        model,
        [tuple(ids[:f]) for ids, f in zip(encoded.ids, encoded.first, strict=True)],
        max_rows=4 * config.batch_size,
        min_count=1,
    )
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = config.epochs * steps_per_epoch
    history: list[dict] = []
    logger.info(
        "training %s for %s at %s: %d examples (%d cause), %d steps",
        config.method,
        attribute,
        site_name(layer),
        len(examples),
        sum(e.kind == "cause" for e in examples),
        total,
    )
    progress = tqdm(
        total=total, desc=f"{config.method} {attribute}", leave=False, disable=not show_progress
    )
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(examples), generator=generator)
        for start in range(0, len(examples), config.batch_size):
            rows = order[start : start + config.batch_size]
            batch, positions, label_mask, starts = teacher_forced_batch(
                tokenizer, [examples[i] for i in rows.tolist()], return_starts=True
            )
            src = source[to_device(rows, device)]  # [batch, d_model]
            if isinstance(trainable, TrainableMask):
                trainable.set_progress(step / max(total - 1, 1))
            with parametrize.cached():  # materialize the orthogonal matrix once per step

                def edit(base: torch.Tensor, src: torch.Tensor = src) -> torch.Tensor:
                    # The trainable sits on the model's first device; with a device_map the
                    # site's block may be on another one.
                    return trainable.intervene(base.to(device).float(), src).to(base.device)

                loss = _counterfactual_loss(
                    model,
                    batch,
                    positions,
                    label_mask,
                    layer,
                    edit,
                    starts,
                    table,
                )
                total_loss = loss + trainable.regularization().to(loss.device)
                total_loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == total:
                record = {"step": step, "epoch": epoch, "loss": loss.item()}  # sync point
                history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
                if on_log is not None:
                    on_log(record)
    progress.close()
    featurizer = trainable.export(
        config.method,
        base_model=model_id,
        base_model_revision=model_revision,
        n_layers=len(decoder_blocks(model)),
        layer=layer,
        site=site_name(layer),
        entity_type=instance.metadata.get("entity_type", ""),
        attribute=attribute,
        seed=config.seed,
    )
    return featurizer.eval(), history
