"""Interchange interventions: cache source vectors, then generate from patched base runs.

Prompts are ``template % entity``; the intervention site is the entity's last token (found from
offsets), base and source each at their own position. Sources run only up to the intervention
layer and are computed once per distinct (template, entity). Work is batched by token length to
keep padding small.
"""

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ravel_bench.engine.generation import greedy_generate, position_ids_from_mask
from ravel_bench.engine.hooks import patch_first_pass, residual_at_positions
from ravel_bench.engine.positions import encode_with_entity_positions

logger = logging.getLogger(__name__)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter (the input embeddings' device)."""
    return next(model.parameters()).device


def length_sorted_batches(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int
) -> list[list[int]]:
    """Split row indices into batches of similar token length (longest first)."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def source_vectors(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    entities: Sequence[str],
    layer: int,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """Residual-stream vectors at the entity's last token, one per row.

    Each distinct (template, entity) runs once, only up to ``layer``.

    Returns:
        ``[rows, d_model]`` on the model's device, in the model's dtype.
    """
    keys = list(dict.fromkeys(zip(templates, entities, strict=True)))
    index = {key: i for i, key in enumerate(keys)}
    device = model_device(model)
    unique = [None] * len(keys)
    batches = length_sorted_batches(tokenizer, [t % e for t, e in keys], batch_size)
    for rows in tqdm(batches, desc="source vectors", leave=False, disable=not show_progress):
        batch, positions = encode_with_entity_positions(
            tokenizer, [keys[i][0] for i in rows], [keys[i][1] for i in rows]
        )
        batch = _to_device(batch, device)
        vectors = residual_at_positions(
            model, layer, batch, positions, position_ids_from_mask(batch["attention_mask"])
        )  # [rows, d_model]
        for j, i in enumerate(rows):
            unique[i] = vectors[j]
    logger.debug("source vectors: %d rows, %d distinct prompts", len(templates), len(keys))
    stacked = torch.stack(unique)  # [distinct, d_model]
    return stacked[torch.tensor([index[k] for k in zip(templates, entities, strict=True)])]


@torch.no_grad()
def intervened_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base_templates: Sequence[str],
    base_entities: Sequence[str],
    layer: int,
    intervene: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    source: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 3,
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """Generate greedily from base prompts whose entity vector is edited on the prompt pass.

    Args:
        base_templates, base_entities: the base prompts, ``template % entity``.
        layer: the intervention site (see :mod:`ravel_bench.engine.blocks`).
        intervene: ``intervene(base [rows, d_model], source [rows, d_model]) -> [rows, d_model]``,
            usually ``featurizer.intervene``; ``None`` generates without any edit.
        source: ``[rows, d_model]`` source vectors aligned with the base rows.
        max_new_tokens: greedy tokens to generate (3 in the RAVEL protocol).

    Returns:
        ``[rows, max_new_tokens]`` generated token ids, on the CPU.
    """
    device = model_device(model)
    prompts = [t % e for t, e in zip(base_templates, base_entities, strict=True)]
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long)
    batches = length_sorted_batches(tokenizer, prompts, batch_size)
    for rows in tqdm(batches, desc="intervened generation", leave=False, disable=not show_progress):
        batch, positions = encode_with_entity_positions(
            tokenizer, [base_templates[i] for i in rows], [base_entities[i] for i in rows]
        )
        batch = _to_device(batch, device)
        if intervene is None:
            generated = greedy_generate(model, batch, max_new_tokens)
        else:
            src = source[torch.tensor(rows, device=source.device)]  # [batch, d_model]

            def edit(base: torch.Tensor, src: torch.Tensor = src) -> torch.Tensor:
                # Featurizers compute in float32 whatever the model's dtype.
                return intervene(base.float(), src.to(base.device).float())

            with patch_first_pass(model, layer, positions, edit):
                generated = greedy_generate(model, batch, max_new_tokens)
        out[torch.tensor(rows)] = generated.cpu()
    return out
