"""Greedy decoding with a KV cache, left padding and explicit position ids.

A hand-rolled loop instead of ``model.generate``: it lets a one-shot hook edit the prompt pass
only, keeps position ids right under left padding for every architecture, and skips
``generate``'s per-step overhead. It handles both cache keyword names (``cache`` in transformers
>= 5, ``past_key_values`` before).
"""

import inspect

import torch
from torch import nn


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return position ids ``[batch, pos]`` that start at 0 on each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_kwargs(model: nn.Module) -> tuple[str, dict]:
    """The cache keyword of ``model.forward`` and ``{logits_to_keep: 1}`` if it takes one."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_kw, extra


def _output_cache(out: object) -> object:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def greedy_generate(
    model: nn.Module, batch: dict[str, torch.Tensor], max_new_tokens: int
) -> torch.Tensor:
    """Generate ``max_new_tokens`` tokens greedily after each left-padded prompt.

    Args:
        model: a causal LM in eval mode.
        batch: ``input_ids`` and ``attention_mask`` ``[batch, pos]``, left-padded, on the model's
            device.
        max_new_tokens: tokens to generate; generation does not stop at EOS (fixed width).

    Returns:
        ``[batch, max_new_tokens]`` generated token ids.
    """
    cache_kw, extra = forward_kwargs(model)
    mask = batch["attention_mask"]
    positions = position_ids_from_mask(mask)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **extra,
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
