"""The two implementations under test: one eval pass and one DAS training run, each side.

ravel-bench uses its public engine (:func:`~ravel_bench.engine.interchange.source_vectors`,
:func:`~ravel_bench.engine.interchange.intervened_generate`) and its trainer
(:func:`~ravel_bench.training.train_intervention`). The baseline uses pyvene the way the
reference RAVEL code does (``explanare/ravel`` ``src/utils/intervention_utils.py``): an
``IntervenableModel`` with one ``LowRankRotatedSpaceIntervention`` on ``block_output`` of layer L
at one ``pos`` unit; evaluation is a batched ``IntervenableModel.generate(...,
intervene_on_prompt=True)`` that runs each batch's source prompts through the model, and
training calls ``IntervenableModel.forward`` on the teacher-forced base with the sources.

Both sides get the same batches (the engine's length-sorted grouping of the base prompts, so
pyvene pads no more than ravel-bench) and the same tokenization and entity positions
(:func:`~ravel_bench.engine.positions.encode_with_entity_positions`), so differences come from
the engines. Position ids follow the attention mask on both sides (``generate`` derives them
itself for the base; they are passed explicitly for the left-padded sources, as the reference
does). The baseline's generation does not keep the un-intervened output
(``output_original_output=False``; the reference asks for it, doubling its generation cost).
"""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from benchmarks.orientation import pyvene_weight
from ravel_bench.engine.generation import position_ids_from_mask
from ravel_bench.engine.interchange import (
    intervened_generate,
    length_sorted_batches,
    source_vectors,
)
from ravel_bench.engine.positions import encode_with_entity_positions
from ravel_bench.featurizers.baselines import RotationFeaturizer
from ravel_bench.featurizers.rotation import TrainableRotation
from ravel_bench.instance.build import RavelInstance
from ravel_bench.training import (
    Example,
    TrainConfig,
    teacher_forced_batch,
    train_intervention,
    training_examples,
)

MAX_NEW_TOKENS = 3


# --- evaluation ---------------------------------------------------------------------------


def ravel_eval(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, str]],
    layer: int,
    featurizer: RotationFeaturizer,
    batch_size: int,
) -> torch.Tensor:
    """ravel-bench: cached source vectors, then patched greedy generation; ``[pairs, 3]``."""
    source = source_vectors(
        model,
        tokenizer,
        [p["source_template"] for p in pairs],
        [p["source_entity"] for p in pairs],
        layer,
        batch_size=batch_size,
        show_progress=False,
    )  # [pairs, d_model]
    return intervened_generate(
        model,
        tokenizer,
        [p["base_template"] for p in pairs],
        [p["entity"] for p in pairs],
        layer,
        featurizer.intervene,
        source,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=batch_size,
        show_progress=False,
    )


def plain_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, str]],
    layer: int,
    batch_size: int,
) -> torch.Tensor:
    """The base prompts' generations without any intervention; ``[pairs, 3]``."""
    return intervened_generate(
        model,
        tokenizer,
        [p["base_template"] for p in pairs],
        [p["entity"] for p in pairs],
        layer,
        None,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=batch_size,
        show_progress=False,
    )


def pyvene_intervenable(model: nn.Module, layer: int, k: int):
    """An ``IntervenableModel`` with one low-rank rotated-space intervention at ``layer``."""
    import pyvene as pv

    config = pv.IntervenableConfig(
        model_type=type(model),
        representations=[
            pv.RepresentationConfig(layer, "block_output", "pos", 1, k),
        ],
        intervention_types=pv.LowRankRotatedSpaceIntervention,
    )
    intervenable = pv.IntervenableModel(config, model)
    intervenable.disable_model_gradients()
    return intervenable


def _only_intervention(intervenable) -> nn.Module:
    (intervention,) = intervenable.interventions.values()
    return intervention


def load_directions(intervenable, directions: torch.Tensor) -> None:
    """Load fixed ``[k, d_model]`` directions into the intervention, as the reference does.

    The reference's ``load_intervenable`` swaps the intervention's parametrized rotate layer for a
    plain one holding the trained matrix (so ``weight`` is not re-materialized on every access);
    here that plain layer is pyvene's own ``LowRankRotateLayer`` with ``weight = R.T``.
    """
    from pyvene.models.layers import LowRankRotateLayer

    weight = pyvene_weight(directions)  # [d_model, k]
    layer = LowRankRotateLayer(*weight.shape, init_orth=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.requires_grad_(False)
    intervention = _only_intervention(intervenable)
    intervention.rotate_layer = layer.to(next(intervenable.model.parameters()).device)


def _encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, str]],
    base_suffixes: Sequence[str] | None = None,
) -> tuple[dict, torch.Tensor, dict, torch.Tensor]:
    """Left-padded base and source batches and their entity positions."""
    base, base_pos = encode_with_entity_positions(
        tokenizer, [p["base_template"] for p in pairs], [p["entity"] for p in pairs], base_suffixes
    )
    source, source_pos = encode_with_entity_positions(
        tokenizer, [p["source_template"] for p in pairs], [p["source_entity"] for p in pairs]
    )
    source["position_ids"] = position_ids_from_mask(source["attention_mask"])
    return base, base_pos, source, source_pos


def _unit_locations(base_pos: torch.Tensor, source_pos: torch.Tensor) -> dict:
    # pyvene's layout: {"sources->base": (source, base)}, each [n_interventions][batch][n_units].
    return {
        "sources->base": (
            [[[int(p)] for p in source_pos]],
            [[[int(p)] for p in base_pos]],
        )
    }


@torch.no_grad()
def pyvene_eval(
    intervenable,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, str]],
    batch_size: int,
) -> torch.Tensor:
    """The baseline: batched ``IntervenableModel.generate`` with ``intervene_on_prompt``."""
    device = next(intervenable.model.parameters()).device
    out = torch.empty(len(pairs), MAX_NEW_TOKENS, dtype=torch.long)
    prompts = [p["base_template"] % p["entity"] for p in pairs]
    for rows in length_sorted_batches(tokenizer, prompts, batch_size):
        base, base_pos, source, source_pos = _encode_pairs(tokenizer, [pairs[i] for i in rows])
        _, generated = intervenable.generate(
            {k: v.to(device) for k, v in base.items()},
            [{k: v.to(device) for k, v in source.items()}],
            _unit_locations(base_pos, source_pos),
            intervene_on_prompt=True,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        out[torch.tensor(rows)] = generated[:, -MAX_NEW_TOKENS:].cpu()
    return out


# --- training -----------------------------------------------------------------------------


def das_config(method: str, batch_size: int, k: int, n_examples: int, seed: int = 0) -> TrainConfig:
    """One epoch over ``n_examples`` cause examples (plus isolate ones for MDAS)."""
    return TrainConfig(
        method=method,
        k=k,
        lr=1e-3,
        batch_size=batch_size,
        epochs=1,
        max_cause_examples=n_examples,
        seed=seed,
        log_every=1,
    )


def ravel_train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instance: RavelInstance,
    attribute: str,
    layer: int,
    config: TrainConfig,
) -> tuple[RotationFeaturizer, list[float]]:
    """ravel-bench's trainer, end to end (source vectors included): the featurizer and the loss
    of every step."""
    losses: list[float] = []
    featurizer, _ = train_intervention(
        model,
        tokenizer,
        instance,
        attribute,
        layer,
        config,
        show_progress=False,
        on_log=lambda record: losses.append(record["loss"]),
    )
    return featurizer, losses


def training_plan(
    instance: RavelInstance, attribute: str, d_model: int, config: TrainConfig
) -> tuple[list[Example], TrainableRotation, list[list[int]]]:
    """What :func:`~ravel_bench.training.train_intervention` will do, replayed for the baseline.

    Returns the same examples, the same initial rotation (its parametrization state included)
    and the same batches, drawn from the same seeded generator in the same order.
    """
    examples = training_examples(instance, attribute, config)
    generator = torch.Generator().manual_seed(config.seed)
    rotation = TrainableRotation(d_model, config.k, generator)
    order = torch.randperm(len(examples), generator=generator).tolist()
    batches = [order[i : i + config.batch_size] for i in range(0, len(examples), config.batch_size)]
    return examples, rotation, batches


def copy_rotation_state(intervenable, rotation: TrainableRotation) -> None:
    """Give pyvene's parametrized rotate layer the exact state of ravel-bench's rotation.

    Both are ``torch.nn.utils.parametrizations.orthogonal`` on the same matrix up to a transpose
    (``[k, d_model]`` vs ``[d_model, k]``), so copying the base and the transposed parameter
    makes the two follow the same trajectory under the same optimizer.
    """
    ours = rotation.proj.parametrizations.weight
    theirs = _only_intervention(intervenable).rotate_layer.parametrizations.weight
    with torch.no_grad():
        theirs.original.copy_(ours.original.T)
        theirs[0].base.copy_(ours[0].base)


def pyvene_train(
    intervenable,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    rotation: TrainableRotation,
    batches: Sequence[Sequence[int]],
    lr: float,
    *,
    n_label_tokens: int = MAX_NEW_TOKENS,
) -> list[float]:
    """The baseline: one ``IntervenableModel`` forward and backward per batch; every loss.

    The base is ``prompt + target`` (left-padded, the same tensors as ravel-bench's
    :func:`~ravel_bench.training.teacher_forced_batch`); the loss is the cross entropy of the
    target's first tokens, as in ravel-bench. The sources run through the model every step.
    """
    device = next(intervenable.model.parameters()).device
    copy_rotation_state(intervenable, rotation)
    parameters = [p for p in intervenable.interventions.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    for rows in batches:
        chosen = [examples[i] for i in rows]
        base, base_pos, label_mask = teacher_forced_batch(tokenizer, chosen, n_label_tokens)
        source, source_pos = encode_with_entity_positions(
            tokenizer, [e.source_template for e in chosen], [e.source_entity for e in chosen]
        )
        source["position_ids"] = position_ids_from_mask(source["attention_mask"])
        base["position_ids"] = position_ids_from_mask(base["attention_mask"])
        _, out = intervenable(
            {k: v.to(device) for k, v in base.items()},
            [{k: v.to(device) for k, v in source.items()}],
            _unit_locations(base_pos, source_pos),
        )
        loss = _label_loss(out.logits, base["input_ids"].to(device), label_mask.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _label_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, label_mask: torch.Tensor
) -> torch.Tensor:
    """Cross entropy of the marked tokens, each predicted from the previous position."""
    predicted = logits[:, :-1]  # [batch, pos - 1, vocab]
    targets = input_ids[:, 1:]  # [batch, pos - 1]
    mask = label_mask[:, 1:]  # [batch, pos - 1]
    return nn.functional.cross_entropy(predicted[mask].float(), targets[mask])
