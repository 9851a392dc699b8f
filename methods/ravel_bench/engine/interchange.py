"""Interchange interventions: cache source vectors, then generate from patched base runs.

Prompts are ``template % entity``; the intervention site is the entity's last token (found from
offsets), base and source each at their own position. Prompts are tokenized once. Sources run
only up to the intervention layer and only up to their entity's last token (later tokens cannot
reach it), once per distinct token sequence. Prefixes before the entity that several rows share
run once (:mod:`ravel_bench.engine.prefix`), and rows are batched by prefix, then length.

In generation, consecutive batches form windows of up to :data:`WINDOW_BATCHES`, and each window
builds a prefix table of only its own prefixes (rows sorted by prefix within a length give a
window few), freed before the next window's is built. The cache held at any time is one
batch's plus a small table, however many prefixes the rows have: one table of every prefix,
padded to the longest, held 218 MB at Llama-2-7b's shapes on the GPU benchmark's pairs, a
window's table 38 MB.
"""

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ravel_bench.engine.blocks import EMBEDDINGS, hidden_size
from ravel_bench.engine.generation import greedy_generate, position_ids_from_mask
from ravel_bench.engine.hooks import patch_first_pass, residual_at_positions
from ravel_bench.engine.positions import encode_rows, pad_left
from ravel_bench.engine.prefix import Prefix, PrefixTable, build_prefix_table, rest_inputs
from ravel_bench.engine.transfer import batch_to_device, to_device

logger = logging.getLogger(__name__)

# Consecutive batches that share one prefix table (see the module docstring): more windows cost
# a table forward pass each, longer ones hold more cached prefixes at once.
WINDOW_BATCHES = 4


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


def _batches(order: list[int], cut: list[bool], batch_size: int) -> list[list[int]]:
    """Consecutive rows of ``order`` in batches; rows cut at a cached prefix and whole rows are
    never mixed."""
    groups = [[i for i in order if cut[i]], [i for i in order if not cut[i]]]
    return [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]


def shared_prefixes(prefixes: Sequence[Prefix]) -> set[Prefix]:
    """The non-empty prefixes that at least two rows have: the ones worth caching."""
    counts = Counter(p for p in prefixes if p)
    return {p for p, n in counts.items() if n >= 2}


def table_windows(
    batches: Sequence[Sequence[int]],
    keys: Sequence[Prefix],
    cut: Sequence[bool],
    max_prefixes: int,
    window_batches: int,
) -> list[list[int]]:
    """Group consecutive batches into windows that share one prefix table.

    Args:
        batches: row indices per batch, each batch all cut or all whole (see :func:`_batches`).
        keys: each row's prefix; cut: whether the row runs on a cached prefix.
        max_prefixes: most distinct prefixes in one window (its table is one forward pass).
        window_batches: most batches in one window.

    Returns:
        Batch indices per window, in order. Whole batches form windows of their own kind.
    """
    windows: list[list[int]] = []
    held: set[Prefix] = set()
    for b, rows in enumerate(batches):
        batch_keys = {keys[i] for i in rows} if cut[rows[0]] else set()
        current = windows[-1] if windows else None
        if (
            current is not None
            and cut[batches[current[0]][0]] == cut[rows[0]]
            and len(current) < window_batches
            and len(held | batch_keys) <= max_prefixes
        ):
            current.append(b)
            held |= batch_keys
        else:
            windows.append([b])
            held = set(batch_keys)
    return windows


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class _WindowTables:
    """The prefix table of each batch's window, built when its window starts and dropped (so
    freed) before the next window's is built."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Sequence[int]],
        keys: Sequence[Prefix],
        cut: Sequence[bool],
        batch_size: int,
        window_batches: int,
        layer: int | None = None,
    ) -> None:
        self.model, self.batches, self.keys, self.layer = model, batches, keys, layer
        self.max_rows = batch_size
        self.window_of: dict[int, int] = {}
        self.windows = table_windows(batches, keys, cut, batch_size, window_batches)
        for w, window in enumerate(self.windows):
            self.window_of.update(dict.fromkeys(window, w))
        self.current: tuple[int, PrefixTable] | None = None

    def for_batch(self, b: int) -> PrefixTable:
        w = self.window_of[b]
        if self.current is None or self.current[0] != w:
            self.current = None  # free the previous window's cache first
            window_keys = [self.keys[i] for batch in self.windows[w] for i in self.batches[batch]]
            table = build_prefix_table(
                self.model, window_keys, max_rows=self.max_rows, layer=self.layer, min_count=1
            )
            self.current = (w, table)
        return self.current[1]


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

    Each distinct prompt runs once, only up to ``layer`` and only up to its entity's last token
    (prompts whose tokens agree up to there share a vector); a prefix shared by several prompts
    runs once.

    Returns:
        ``[rows, d_model]`` on the model's device, in the model's dtype.
    """
    keys = list(dict.fromkeys(zip(templates, entities, strict=True)))
    if not keys:
        return torch.empty(0, hidden_size(model), device=model_device(model))
    key_index = {key: i for i, key in enumerate(keys)}
    encoded = encode_rows(tokenizer, [t for t, _ in keys], [e for _, e in keys])
    # Token sequences up to the entity's last token: what the vector depends on.
    truncated = [
        tuple(ids[: last + 1]) for ids, last in zip(encoded.ids, encoded.last, strict=True)
    ]
    distinct = list(dict.fromkeys(truncated))
    seq_index = {seq: i for i, seq in enumerate(distinct)}
    first = {seq: f for seq, f in zip(truncated, encoded.first, strict=True)}
    prefixes = [seq[: first[seq]] for seq in distinct]
    # At the embeddings the vector is the entity token's own: no prefix to share.
    shared = shared_prefixes(prefixes) if layer != EMBEDDINGS else set()
    cut = [p in shared for p in prefixes]
    order = sorted(
        range(len(distinct)), key=lambda i: (not cut[i], prefixes[i], len(distinct[i]), i)
    )
    device = model_device(model)
    pad_id = _pad_id(tokenizer)
    unique: torch.Tensor | None = None  # [distinct, d_model], filled batch by batch
    batches = _batches(order, cut, batch_size)
    # One window, as many batches as it takes (up to batch_size prefixes per table): this pass
    # stops at ``layer`` and keeps no cache for decoding, so its table is not the eval's peak,
    # and the vectors keep the values (to the last bit) that trained featurizers were fit on.
    tables = _WindowTables(model, batches, prefixes, cut, batch_size, len(batches), layer=layer)
    progress = tqdm(batches, desc="source vectors", leave=False, disable=not show_progress)
    for b, rows in enumerate(progress):
        cache = None
        if cut[rows[0]]:  # a batch is all cut or all whole
            cache, prefix_mask = tables.for_batch(b).select([prefixes[i] for i in rows])
            rest = batch_to_device(
                pad_left([distinct[i][len(prefixes[i]) :] for i in rows], pad_id), device
            )
            inputs = rest_inputs(rest, prefix_mask)
            batch = {k: inputs[k] for k in ("input_ids", "attention_mask")}
            position_ids = inputs["position_ids"]
        else:
            batch = batch_to_device(pad_left([distinct[i] for i in rows], pad_id), device)
            position_ids = position_ids_from_mask(batch["attention_mask"])
        # Every row ends with its entity's last token.
        last = torch.full((len(rows),), batch["input_ids"].shape[1] - 1, device=device)
        vectors = residual_at_positions(model, layer, batch, last, position_ids, cache=cache)
        if unique is None:
            unique = vectors.new_empty(len(distinct), vectors.shape[-1])
        unique[to_device(torch.tensor(rows), vectors.device)] = vectors  # [rows, d_model]
    logger.debug(
        "source vectors: %d rows, %d distinct prompts, %d distinct token sequences",
        len(templates),
        len(keys),
        len(distinct),
    )
    rows = torch.tensor(
        [seq_index[truncated[key_index[k]]] for k in zip(templates, entities, strict=True)]
    )
    return unique[to_device(rows, unique.device)]  # [rows, d_model]


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
    keep_on_device: bool = False,
) -> torch.Tensor:
    """Generate greedily from base prompts whose entity vector is edited on the prompt pass.

    Args:
        base_templates, base_entities: the base prompts, ``template % entity``.
        layer: the intervention site (see :mod:`ravel_bench.engine.blocks`).
        intervene: ``intervene(base [rows, d_model], source [rows, d_model]) -> [rows, d_model]``,
            usually ``featurizer.intervene``; ``None`` generates without any edit.
        source: ``[rows, d_model]`` source vectors aligned with the base rows.
        max_new_tokens: greedy tokens to generate (3 in the RAVEL protocol).
        keep_on_device: return the tokens on the model's device. The loop reads no value of a
            device tensor, so on a GPU the host queues batch after batch; the copy to the CPU
            (the default) is the one place it waits.

    Returns:
        ``[rows, max_new_tokens]`` generated token ids, on the CPU (or the model's device).
    """
    encoded = encode_rows(tokenizer, base_templates, base_entities)
    prefixes = [tuple(ids[:f]) for ids, f in zip(encoded.ids, encoded.first, strict=True)]
    shared = shared_prefixes(prefixes)
    cut = [p in shared for p in prefixes]
    # Rows run from their cut on: batch them by that length (least padding), then by prefix (so
    # that a window of batches holds few prefixes).
    kept_length = [
        len(ids) - (f if c else 0)
        for ids, f, c in zip(encoded.ids, encoded.first, cut, strict=True)
    ]
    order = sorted(
        range(len(prefixes)), key=lambda i: (not cut[i], -kept_length[i], prefixes[i], i)
    )
    device = model_device(model)
    pad_id = _pad_id(tokenizer)
    # Filled on the device and copied back once: a copy per batch would make the host wait for
    # the GPU every batch instead of queueing the next one.
    out = torch.empty(len(prefixes), max_new_tokens, dtype=torch.long, device=device)
    batches = _batches(order, cut, batch_size)
    tables = _WindowTables(model, batches, prefixes, cut, batch_size, WINDOW_BATCHES)
    progress = tqdm(batches, desc="intervened generation", leave=False, disable=not show_progress)
    for b, rows in enumerate(progress):
        cache = None
        start = [encoded.first[i] if cut[i] else 0 for i in rows]  # each row's first token kept
        kept = [encoded.ids[i][s:] for i, s in zip(rows, start, strict=True)]
        batch = batch_to_device(pad_left(kept, pad_id), device)
        width = batch["input_ids"].shape[1]
        last = torch.tensor(
            [
                width - len(k) + encoded.last[i] - s
                for i, k, s in zip(rows, kept, start, strict=True)
            ]
        )  # [batch]: the entity's last token, in the padded kept rows
        last = to_device(last, device)
        index = to_device(torch.tensor(rows), device)  # [batch]
        if cut[rows[0]]:  # a batch is all cut or all whole
            cache, prefix_mask = tables.for_batch(b).select([prefixes[i] for i in rows])
            batch = rest_inputs(batch, prefix_mask)
        if intervene is None:
            generated = greedy_generate(model, batch, max_new_tokens, cache=cache)
        else:
            src = source[index.to(source.device)]  # [batch, d_model]

            def edit(base: torch.Tensor, src: torch.Tensor = src) -> torch.Tensor:
                # Featurizers compute in float32 whatever the model's dtype.
                return intervene(base.float(), src.to(base.device).float())

            with patch_first_pass(model, layer, last, edit):
                generated = greedy_generate(model, batch, max_new_tokens, cache=cache)
        out[index] = generated
    return out if keep_on_device else out.cpu()
