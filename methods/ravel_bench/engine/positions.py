"""Find the entity's tokens in a filled template, from the tokenizer's offset mapping."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ravel_bench.errors import DataFormatError, IncompatibleModelError


def entity_char_span(template: str, entity: str) -> tuple[int, int]:
    """Return the ``[start, end)`` character span of ``entity`` in ``template % entity``."""
    start = template.index("%s")
    # Characters before the placeholder may contain '%%' escapes that shrink when filled.
    start = len(template[:start] % ()) if "%" in template[:start] else start
    return start, start + len(entity)


def _check_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise IncompatibleModelError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: entity positions need offsets",
            hint="load the tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)",
        )


def _no_entity_token(entity: str, prompt: str) -> DataFormatError:
    return DataFormatError(
        f"cannot locate entity {entity!r} in prompt {prompt!r}: no token covers its characters",
        hint="check that the template's %s is where the entity goes",
    )


def encode_with_entity_positions(
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    entities: Sequence[str],
    suffixes: Sequence[str] | None = None,
    *,
    return_offsets: bool = False,
) -> (
    tuple[dict[str, torch.Tensor], torch.Tensor]
    | tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]
):
    """Tokenize filled templates with left padding and find each entity's last token.

    Args:
        tokenizer: a fast tokenizer (it must return offsets); padding side is forced to left.
        templates: one template (with one ``%s``) per row.
        entities: the entity filled into each template.
        suffixes: text appended to each prompt (e.g. a label for teacher forcing).
        return_offsets: also return the ``[batch, pos, 2]`` character offsets.

    Returns:
        ``(batch, positions)``: ``batch`` has ``input_ids`` and ``attention_mask``
        ``[batch, pos]``; ``positions`` ``[batch]`` indexes the entity's last token in the padded
        row. With ``return_offsets``, the offsets come third.

    Raises:
        IncompatibleModelError: the tokenizer returns no offsets (not a fast tokenizer).
        DataFormatError: an entity covers no token (names the prompt).
    """
    batch, _, last, offsets = encode_with_entity_span(tokenizer, templates, entities, suffixes)
    return (batch, last, offsets) if return_offsets else (batch, last)


def encode_with_entity_span(
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    entities: Sequence[str],
    suffixes: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`encode_with_entity_positions`, with the entity's first token as well.

    Returns:
        ``(batch, first, last, offsets)``: ``first`` and ``last`` ``[batch]`` index the
        entity's first and last token in the padded row (equal for a one-token entity);
        ``offsets`` ``[batch, pos, 2]``.
    """
    _check_fast(tokenizer)
    prompts = [t % e for t, e in zip(templates, entities, strict=True)]
    texts = prompts if suffixes is None else [p + s for p, s in zip(prompts, suffixes, strict=True)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(
            texts,
            padding=True,
            return_tensors="pt",
            return_offsets_mapping=True,
            add_special_tokens=True,
        )
    finally:
        tokenizer.padding_side = side
    offsets = enc.pop("offset_mapping")  # [batch, pos, 2]
    mask = enc["attention_mask"].bool()
    spans = torch.tensor(
        [entity_char_span(t, e) for t, e in zip(templates, entities, strict=True)]
    )  # [batch, 2]
    starts, ends = offsets[..., 0], offsets[..., 1]  # [batch, pos]
    # Real, non-empty tokens that overlap the entity's characters; the entity's first and last
    # tokens are the first and last of them.
    hits = mask & (starts < spans[:, 1:]) & (ends > spans[:, :1]) & (ends > starts)  # [batch, pos]
    index = torch.arange(hits.shape[1]).expand_as(hits)
    last = torch.where(hits, index, -1).max(dim=1).values  # [batch]
    first = torch.where(hits, index, hits.shape[1]).min(dim=1).values  # [batch]
    if (last < 0).any():
        i = int((last < 0).nonzero()[0, 0])
        raise _no_entity_token(entities[i], prompts[i])
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return batch, first, last, offsets


@dataclass(frozen=True)
class EncodedRows:
    """Prompts tokenized once, unpadded.

    Args:
        ids: each row's token ids (special tokens included).
        first, last: index in ``ids[row]`` of the entity's first and last token.
    """

    ids: list[list[int]]
    first: list[int]
    last: list[int]


def encode_rows(
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    entities: Sequence[str],
    *,
    chunk_size: int = 1024,
) -> EncodedRows:
    """Tokenize every ``template % entity`` once and locate its entity (see
    :func:`encode_with_entity_span`), a chunk of rows per tokenizer call.

    Rows are neither padded nor turned into tensors: the tokenizer returns Python lists, which
    is several times faster than building ``[batch, pos]`` tensors only to cut them apart again.
    """
    _check_fast(tokenizer)
    ids: list[list[int]] = []
    first: list[int] = []
    last: list[int] = []
    rows = list(zip(templates, entities, strict=True))
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        prompts = [t % e for t, e in chunk]
        for (template, entity), prompt, (row, offsets) in zip(
            chunk, prompts, _ids_and_offsets(tokenizer, prompts), strict=True
        ):
            span_start, span_end = entity_char_span(template, entity)
            # The same rule as encode_with_entity_span: non-empty tokens overlapping the entity.
            hits = [
                i for i, (a, b) in enumerate(offsets) if a < span_end and b > span_start and b > a
            ]
            if not hits:
                raise _no_entity_token(entity, prompt)
            ids.append(row)
            first.append(hits[0])
            last.append(hits[-1])
    return EncodedRows(ids=ids, first=first, last=last)


def _ids_and_offsets(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Each prompt's token ids (special tokens added) and character offsets, as Python lists.

    ``tokenizer(prompts, return_offsets_mapping=True)`` calls the Rust backend's
    ``encode_batch`` and then converts every encoding into dicts of lists in Python, which costs
    several times the encoding itself. When the backend is in the state that call would put it in
    (no truncation, no padding, special tokens not split), the backend is asked directly and
    gives the same ids and offsets; otherwise (state left by a padded or truncated call) the
    tokenizer's own call runs, and resets that state for the next chunk.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and backend.truncation is None
        and backend.padding is None
        and getattr(backend, "encode_special_tokens", False)
        == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        encodings = backend.encode_batch(prompts, add_special_tokens=True)
        return [(e.ids, e.offsets) for e in encodings]
    enc = tokenizer(
        prompts,
        return_offsets_mapping=True,
        return_attention_mask=False,
        add_special_tokens=True,
    )
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token rows into ``input_ids`` and ``attention_mask`` ``[batch, pos]``."""
    width = max(len(row) for row in rows)
    return {
        "input_ids": torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }
