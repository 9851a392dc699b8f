"""Greedy decoding with a KV cache, left padding and explicit position ids.

A hand-rolled loop instead of ``model.generate``: it lets a one-shot hook edit the prompt pass
only, keeps position ids right under left padding for every architecture, and skips
``generate``'s per-step overhead. It handles both cache keyword names (``cache`` in transformers
>= 5, ``past_key_values`` before).
"""

import functools
import inspect

import torch
from torch import nn


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return position ids ``[batch, pos]`` that start at 0 on each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_kwargs(model: nn.Module) -> tuple[str, dict]:
    """The cache keyword of ``model.forward`` and ``{logits_to_keep: 1}`` if it takes one."""
    # A PEFT wrapper's forward takes **kwargs and passes them to the base model: inspect that.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_kw, keeps_logits = _forward_signature(type(base))
    return cache_kw, ({"logits_to_keep": 1} if keeps_logits else {})


@functools.cache
def _forward_signature(model_class: type) -> tuple[str, bool]:
    """Inspected once per model class: generation and training call this every step."""
    params = inspect.signature(model_class.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _output_cache(out: object) -> object:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int,
    *,
    cache: object | None = None,
) -> torch.Tensor:
    """Generate ``max_new_tokens`` tokens greedily after each left-padded prompt.

    Args:
        model: a causal LM in eval mode.
        batch: ``input_ids`` ``[batch, pos]`` and ``attention_mask``, left-padded, on the model's
            device; optionally ``position_ids`` ``[batch, pos]`` (else derived from the mask).
            With a ``cache``, the mask covers the cached tokens too: ``[batch, cached + pos]``.
        max_new_tokens: tokens to generate; generation does not stop at EOS (fixed width).
        cache: a KV cache holding tokens that precede ``input_ids`` (see
            :mod:`ravel_bench.engine.prefix`); ``None`` starts from scratch.

    Returns:
        ``[batch, max_new_tokens]`` generated token ids.
    """
    cache_kw, extra = forward_kwargs(model)
    mask = batch["attention_mask"]
    positions = batch.get("position_ids")
    if positions is None:
        positions = position_ids_from_mask(mask)[:, -batch["input_ids"].shape[1] :]
    # The prompt's last position as a 1-D index, not ``logits_to_keep=1``: the slice ``[:, -1:]``
    # is a strided view that ``lm_head`` multiplies as a batched matmul (several times slower);
    # an index gathers a contiguous ``[batch, 1, d_model]`` first.
    last_only = (
        {"logits_to_keep": torch.full((1,), batch["input_ids"].shape[1] - 1, device=mask.device)}
        if extra
        else {}
    )
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **({} if cache is None else {cache_kw: cache}),
        **last_only,
    )
    next_token = out.logits[:, -1].argmax(-1)  # [batch]
    generated = [next_token]
    for _ in range(max_new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=next_token[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_kw: _output_cache(out)},
            **extra,
        )
        next_token = out.logits[:, -1].argmax(-1)
        generated.append(next_token)
    return torch.stack(generated, dim=1)  # [batch, max_new_tokens]
