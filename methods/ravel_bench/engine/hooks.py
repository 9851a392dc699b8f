"""The only module that registers hooks: read or replace the residual stream at one site.

Block outputs are a tensor in transformers >= 5 and a tuple ``(hidden, ...)`` before; both are
normalized here, and the hidden state's shape is checked against the model's ``d_model``. Hooks
are context managers that remove themselves in ``finally``. A user function sees only the hidden
state ``[batch, pos, d_model]`` and returns a replacement (or ``None`` to keep it).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ravel_bench.engine.blocks import EMBEDDINGS, decoder_blocks, hidden_size, site_name
from ravel_bench.engine.generation import forward_kwargs
from ravel_bench.errors import IncompatibleModelError

HiddenFn = Callable[[torch.Tensor], torch.Tensor | None]


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the needed layer has run."""


def check_hidden(hidden: object, d_model: int, site: str) -> torch.Tensor:
    """Return ``hidden`` if it is a ``[batch, pos, d_model]`` tensor, else raise."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != d_model:
        found = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise IncompatibleModelError(
            f"{site}: expected a residual stream of shape (batch, pos, {d_model}), found {found}"
        )
    return hidden


@contextmanager
def residual_hook(model: nn.Module, layer: int, fn: HiddenFn) -> Iterator[None]:
    """Call ``fn`` on the residual stream at ``layer`` for every forward pass in the block.

    Args:
        model: a Hugging Face causal LM.
        layer: :data:`~ravel_bench.engine.blocks.EMBEDDINGS` (the input of block 0) or a block
            index (the block's output).
        fn: ``fn(hidden [batch, pos, d_model]) -> replacement or None``.
    """
    blocks = decoder_blocks(model)
    d_model = hidden_size(model)
    site = site_name(layer)

    if layer == EMBEDDINGS:

        def pre_hook(module, args, kwargs):
            if args:
                new = fn(check_hidden(args[0], d_model, site))
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(check_hidden(kwargs["hidden_states"], d_model, site))
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(module, args, out):
            hidden = (
                out[0] if isinstance(out, tuple) else out
            )  # transformers <5: tuple, >=5: tensor
            new = fn(check_hidden(hidden, d_model, site))
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Return ``hidden[b, positions[b]]``: ``[batch, pos, d_model] -> [batch, d_model]``."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]


@torch.no_grad()
def residual_at_positions(
    model: nn.Module,
    layer: int,
    batch: dict[str, torch.Tensor],
    positions: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    cache: object | None = None,
) -> torch.Tensor:
    """Run ``model`` only up to ``layer`` and return the residual stream at ``positions``.

    Args:
        batch: ``input_ids`` and ``attention_mask`` ``[batch, pos]`` on the model's device (the
            mask also covers the cached tokens when ``cache`` is given).
        positions: ``[batch]`` token index per row (in ``input_ids``).
        position_ids: ``[batch, pos]``.
        cache: a KV cache of earlier tokens (see :mod:`ravel_bench.engine.prefix`), or ``None``.

    Returns:
        ``[batch, d_model]`` vectors.
    """
    captured: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> None:
        captured.append(gather_positions(hidden, positions))
        raise _StopForward

    inputs = {**batch, "position_ids": position_ids, "use_cache": cache is not None}
    if cache is not None:
        inputs[forward_kwargs(model)[0]] = cache
    _run_stopped(model, layer, capture, inputs)
    return captured[0]


def run_until(model: nn.Module, layer: int, inputs: dict) -> None:
    """Call ``model(**inputs)`` and stop once ``layer`` has run (e.g. to fill a KV cache)."""

    def stop(hidden: torch.Tensor) -> None:
        raise _StopForward

    _run_stopped(model, layer, stop, inputs)


def _run_stopped(model: nn.Module, layer: int, fn: HiddenFn, inputs: dict) -> None:
    with residual_hook(model, layer, fn):
        try:
            model(**inputs)
        except _StopForward:
            return
    raise IncompatibleModelError(f"{site_name(layer)}: the hook never ran during the forward pass")


@contextmanager
def patch_first_pass(
    model: nn.Module,
    layer: int,
    positions: torch.Tensor,
    new_vectors: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[None]:
    """Replace the residual stream at ``positions`` during the next forward pass only.

    Later passes (the generated tokens, which read the edit through the KV cache) are untouched.

    Args:
        positions: ``[batch]`` token index per row.
        new_vectors: maps the base vectors ``[batch, d_model]`` to the replacements
            ``[batch, d_model]``.
    """
    fired = False

    def patch(hidden: torch.Tensor) -> torch.Tensor | None:
        nonlocal fired
        if fired:
            return None
        fired = True
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        cols = positions.to(hidden.device)
        hidden = hidden.clone()
        hidden[rows, cols] = new_vectors(hidden[rows, cols]).to(hidden.dtype)
        return hidden

    with residual_hook(model, layer, patch):
        yield
