"""Run the tokens before the entity once per distinct prefix, through a shared KV cache.

Interventions edit the entity's last token at layer L. Every token before the entity's first
token (a template's prefix, e.g. ``<s> {"city": "``) is computed the same whatever the edit
(causal attention), and the same for every entity filled into that template. So the prefixes
that several rows share run once, without gradients, into a :class:`PrefixTable` (a KV cache
with one row per prefix); each batch then selects its rows' prefixes from it and runs only the
rest of each row (the entity and what follows) on top. Only the rest is recomputed per row, and
only the rest is differentiated during training.

Prefixes are compared as token ids, so the cut never depends on how a tokenizer treats text.
Rows are left-padded; after the cut the prefix segment and the rest segment are each
left-padded, so a row reads ``[pad.. prefix | pad.. rest]``: the attention mask covers the
holes and position ids follow the mask, so every real token keeps its position. A row whose
prefix is not in the table is not cut: all of it is in the rest.
"""

import copy
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ravel_bench.engine.generation import forward_kwargs, position_ids_from_mask
from ravel_bench.engine.hooks import run_until
from ravel_bench.engine.transfer import to_device

Prefix = tuple[int, ...]


@dataclass(frozen=True)
class PrefixSplit:
    """A left-padded batch cut before each row's entity.

    Args:
        keys: each row's prefix as token ids (``()`` for a row that is not cut).
        rest: ``input_ids`` and ``attention_mask`` ``[batch, r]``: each row from its cut on,
            left-padded.
        shift: column ``c`` of the original batch is column ``c - shift`` of ``rest``.
    """

    keys: tuple[Prefix, ...]
    rest: dict[str, torch.Tensor]
    shift: int


def split_before(
    batch: dict[str, torch.Tensor], starts: torch.Tensor, known: Container[Prefix] | None = None
) -> PrefixSplit | None:
    """Cut each row of a left-padded batch before column ``starts[row]``.

    Args:
        batch: ``input_ids`` and ``attention_mask`` ``[batch, pos]``, left-padded.
        starts: ``[batch]`` the first column of each row's rest (the entity's first token).
        known: only prefixes in here are cut off (e.g. a :class:`PrefixTable`); ``None``: all.

    Returns:
        The split, or ``None`` when no row is cut.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    pad = (width - mask.sum(dim=1)).tolist()  # first real column per row
    starts = starts.tolist()
    rows = ids.tolist()
    keys = []
    for row, (first_real, start) in enumerate(zip(pad, starts, strict=True)):
        key = tuple(rows[row][first_real:start])
        if key and known is not None and key not in known:
            key = ()
        keys.append(key)
        starts[row] = start if key else first_real
    if not any(keys):
        return None
    cut = torch.tensor(starts, device=ids.device)  # [batch]
    shift = width - int((width - cut).max())
    columns = torch.arange(shift, width, device=ids.device)
    rest_mask = mask[:, shift:] * (columns[None] >= cut[:, None]).to(mask.dtype)  # [batch, r]
    return PrefixSplit(
        keys=tuple(keys),
        rest={"input_ids": ids[:, shift:], "attention_mask": rest_mask},
        shift=shift,
    )


def rest_inputs(
    rest: dict[str, torch.Tensor], prefix_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Model inputs of a rest segment on top of a prefix cache.

    Args:
        rest: ``input_ids`` and ``attention_mask`` ``[batch, r]``.
        prefix_mask: ``[batch, p]`` the cached prefix's attention mask (from
            :meth:`PrefixTable.select`).

    Returns:
        ``input_ids`` ``[batch, r]``, the full ``attention_mask`` ``[batch, p + r]`` and
        ``position_ids`` ``[batch, r]``.
    """
    mask = torch.cat([prefix_mask, rest["attention_mask"]], dim=1)  # [batch, p + r]
    positions = position_ids_from_mask(mask)[:, prefix_mask.shape[1] :]  # [batch, r]
    return {"input_ids": rest["input_ids"], "attention_mask": mask, "position_ids": positions}


@dataclass(frozen=True)
class PrefixTable:
    """Distinct prefixes run once: a KV cache with one row per prefix.

    Args:
        rows: ``{prefix token ids: row}``.
        attention_mask: ``[n_prefixes, p]`` the prefixes' left-padded mask.
        cache: their KV cache (blocks up to ``layer`` only when the table was built with one).
    """

    rows: dict[Prefix, int]
    attention_mask: torch.Tensor
    cache: object

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def select(self, keys: Sequence[Prefix]) -> tuple[object, torch.Tensor]:
        """A cache with one row per key, and its ``[batch, p]`` attention mask.

        A key not in the table (``()`` for a row that was not cut) gets an all-zero mask: that
        row attends to no cached token.
        """
        device = self.attention_mask.device
        index = to_device(torch.tensor([self.rows.get(k, 0) for k in keys]), device)  # [batch]
        has_prefix = to_device(torch.tensor([k in self.rows for k in keys]), device)  # [batch]
        mask = self.attention_mask[index] * has_prefix[:, None].to(self.attention_mask.dtype)
        return _select_rows(self.cache, index), mask  # [batch, p]


def new_cache(model: nn.Module) -> object:
    """An empty KV cache of the kind ``model`` builds itself (``DynamicCache``)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def _select_rows(cache: object, index: torch.Tensor) -> object:
    """A new cache holding rows ``index`` of ``cache``, which is left unchanged."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list):
        # transformers >= 4.56: reordering replaces each layer's tensors, so copies of the
        # layer objects (sharing the table's tensors until then) are enough.
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in layers]
    else:
        selected = copy.deepcopy(cache)
    selected.reorder_cache(index)  # [n_prefixes, ...] -> [batch, ...]
    return selected


@torch.no_grad()
def build_prefix_table(
    model: nn.Module,
    prefixes: Sequence[Prefix],
    *,
    max_rows: int,
    layer: int | None = None,
    min_count: int = 2,
) -> PrefixTable | None:
    """Run the prefixes that several rows share, once, in one forward pass.

    Args:
        prefixes: each row's prefix (``()`` for none); repeats are what the table saves.
        max_rows: keep at most this many prefixes, the most used (a forward pass of
            ``max_rows`` rows: pass the batch size).
        layer: stop after this layer (enough for rests that stop there too); ``None``: every
            block.
        min_count: a prefix enters the table only if at least this many rows use it.

    Returns:
        The table, or ``None`` when no prefix is shared.
    """
    counts = Counter(k for k in prefixes if k)
    chosen = sorted(k for k, n in counts.most_common(max_rows) if n >= min_count)
    if not chosen:
        return None
    device = next(model.parameters()).device
    width = max(len(k) for k in chosen)
    ids = to_device(torch.tensor([[0] * (width - len(k)) + list(k) for k in chosen]), device)
    mask = to_device(torch.tensor([[0] * (width - len(k)) + [1] * len(k) for k in chosen]), device)
    cache = new_cache(model)
    cache_kw, extra = forward_kwargs(model)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids_from_mask(mask),
        "use_cache": True,
        cache_kw: cache,
    }
    if layer is None:
        model(**inputs, **extra)
    else:
        run_until(model, layer, inputs)
    return PrefixTable(rows={k: i for i, k in enumerate(chosen)}, attention_mask=mask, cache=cache)
