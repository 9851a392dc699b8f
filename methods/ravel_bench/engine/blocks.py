"""Locate the decoder blocks of any Hugging Face causal LM, and name intervention sites.

A *layer* is an int ``L``: ``-1`` is the residual stream entering block 0 (``"embeddings"``),
``0 .. n_layers-1`` the residual stream after block ``L`` (the block's output). Sites are named
``blocks.{L}.resid_post`` (``blocks.0.resid_pre`` for the embeddings) in configs, logs, reports.
"""

import logging

from torch import nn

from ravel_bench.errors import ConfigError, IncompatibleModelError

logger = logging.getLogger(__name__)

EMBEDDINGS = -1
# Attribute paths of the decoder block list, by architecture family.
_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Gemma, Gemma 2/3, Qwen 2/3, Phi-3, OLMo
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "base_model.model.model.layers",  # a PEFT-wrapped Llama-style model
)


def _get_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the ordered decoder blocks of ``model``.

    Raises:
        IncompatibleModelError: none of the known layouts matches and no ``nn.ModuleList`` has
            ``config.num_hidden_layers`` entries.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    if n_layers:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                logger.debug("decoder blocks found at %s by their count", name)
                return module
    raise IncompatibleModelError(
        f"cannot find the decoder blocks of {type(model).__name__}: tried "
        f"{', '.join(_BLOCK_PATHS)} and any ModuleList of num_hidden_layers={n_layers} modules",
        hint="pass a Hugging Face causal LM (Llama, Gemma, Mistral, Qwen, GPT-2, GPT-NeoX, ...)",
    )


def hidden_size(model: nn.Module) -> int:
    """Return the width of the residual stream (``d_model``)."""
    config = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    text_config = getattr(config, "text_config", None)
    if text_config is not None and isinstance(getattr(text_config, "hidden_size", None), int):
        return text_config.hidden_size
    raise IncompatibleModelError(f"{type(model).__name__}: its config has no hidden size")


def parse_layer(value: str | int, n_layers: int) -> int:
    """Parse ``"embeddings"`` or a 0-based block index into a layer int, checking the range.

    Raises:
        ConfigError: not an int or ``"embeddings"``, or out of ``[0, n_layers)``.
    """
    if value == "embeddings" or value == EMBEDDINGS:
        return EMBEDDINGS
    try:
        layer = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"layer {value!r} is not 'embeddings' or a block index 0..{n_layers - 1}"
        ) from None
    if not 0 <= layer < n_layers:
        raise ConfigError(
            f"layer {layer} is out of range: this model has {n_layers} blocks (0..{n_layers - 1}); "
            "use 'embeddings' for the stream entering block 0"
        )
    return layer


def parse_layers(value: str, n_layers: int) -> list[int]:
    """Parse ``"all"``, a comma list or a single layer (see :func:`parse_layer`)."""
    if value == "all":
        return [EMBEDDINGS, *range(n_layers)]
    return [parse_layer(v.strip(), n_layers) for v in str(value).split(",")]


def layer_name(layer: int) -> str:
    """Return ``"embeddings"`` or the block index as a string (the key in results files)."""
    return "embeddings" if layer == EMBEDDINGS else str(layer)


def site_name(layer: int) -> str:
    """Return the site name, ``blocks.{L}.resid_post`` or ``blocks.0.resid_pre``."""
    return "blocks.0.resid_pre" if layer == EMBEDDINGS else f"blocks.{layer}.resid_post"
