"""Load a target model: any Hugging Face causal LM, or the embedded toy default.

``toy`` (the CLI default) names the embedded model: it is built from the release on first use
(``ravel-bench toy-model``), cached under :func:`ravel_bench.data.default_cache_dir`, and loaded
through ``AutoModelForCausalLM.from_pretrained`` exactly like a Hub model. Its model id is its
cache folder name (``toy-llama-city-6x128-<hash>``), which is what instances record.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ravel_bench.data import default_cache_dir, load_release
from ravel_bench.errors import ConfigError, IncompatibleModelError
from ravel_bench.toy_model import METADATA_FILE as TOY_METADATA_FILE
from ravel_bench.toy_model import TINY_TOY_CONFIG, ToyModelConfig, build_toy_model

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "toy"
TINY_EMBEDDED_MODEL = "toy-tiny"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for the engine.

    Args:
        model: the causal LM, in eval mode, gradients off.
        tokenizer: its fast tokenizer.
        model_id: the id recorded in instances and results.
        revision: the Hub revision, if any.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    revision: str | None = None
    trained_facts: dict | None = None

    @property
    def known_entities(self) -> tuple[str, ...]:
        """Entities a toy model was trained on (empty for other models)."""
        return tuple((self.trained_facts or {}).get("entities", {}))

    @property
    def known_attributes(self) -> tuple[str, ...]:
        """Attributes a toy model was trained on (empty for other models)."""
        return tuple((self.trained_facts or {}).get("attributes", ()))


def default_device() -> str:
    """``cuda`` if available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def embedded_model_path(
    name: str = EMBEDDED_MODEL, release_source: str | Path | None = None, show_progress: bool = True
) -> Path:
    """Return the folder of the embedded toy model, building it on first use."""
    config = TINY_TOY_CONFIG if name == TINY_EMBEDDED_MODEL else ToyModelConfig()
    folder = default_cache_dir() / "models" / config.name()
    if not (folder / "config.json").is_file():
        release = load_release(release_source, (config.entity_type,)).types[config.entity_type]
        folder = build_toy_model(release, config, folder, show_progress=show_progress)
    return folder


def load_model(
    model: str = EMBEDDED_MODEL,
    *,
    dtype: str = "float32",
    device: str | None = None,
    revision: str | None = None,
    release_source: str | Path | None = None,
    show_progress: bool = True,
) -> LoadedModel:
    """Load a causal LM by Hub id, local path, ``toy`` or ``toy-tiny``.

    Args:
        model: Hub id or folder; ``toy`` is the embedded default, ``toy-tiny`` its test variant;
            a cached toy's folder name (``toy-llama-...``) loads that toy.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (``device_map="auto"``); default cuda
            if available.
        revision: Hub revision.
        release_source: where to read the release when the toy must be built.

    Raises:
        ConfigError: unknown dtype.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    path: str | Path = model
    model_id = model
    if model in (EMBEDDED_MODEL, TINY_EMBEDDED_MODEL):
        path = embedded_model_path(model, release_source, show_progress)
        model_id = path.name
    elif model.startswith("toy-llama-") and (default_cache_dir() / "models" / model).is_dir():
        path = default_cache_dir() / "models" / model
    device = device or default_device()
    kwargs = {"dtype": _DTYPES[dtype], "revision": revision}
    if device == "auto":
        kwargs["device_map"] = "auto"
    logger.info("loading model %s (%s, %s)", model_id, dtype, device)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        raise IncompatibleModelError(
            f"cannot load {model!r} as a causal LM with a tokenizer: {str(exc).splitlines()[0]}",
            hint="pass a Hub id or a folder written by save_pretrained (model + tokenizer); "
            "offline, the model must already be in the local Hub cache",
        ) from exc
    if device != "auto":
        lm = lm.to(device)
    lm.eval().requires_grad_(False)
    facts_file = Path(path) / TOY_METADATA_FILE
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else None
    return LoadedModel(lm, tokenizer, model_id, revision, facts)
