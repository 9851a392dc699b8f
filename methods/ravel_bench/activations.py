"""Collect residual-stream vectors at the entity's last token, cached on disk.

The unsupervised methods (PCA, SAE) and the adversarial probe (RLAP) learn from plain
activations: one vector per (template, entity) prompt, read at the intervention site (the
residual stream after block ``layer``, at the entity's last token; see
:mod:`ravel_bench.engine.interchange`), with the entity's attribute values from the release as
labels.

Vectors are stored as float32 on the CPU, whatever the model's dtype. A collection is cached per
(model id and revision, layer, entity type, prompt list) as ``{key}.safetensors`` (one tensor,
``vectors`` ``[rows, d_model]``) plus a ``{key}.json`` sidecar that lists the prompts, under
``default_cache_dir() / "activations"`` or a folder passed in. Nothing is cached for a model
without an id (a model built in memory): its weights cannot be told apart by name.
"""

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from ravel_bench import __version__
from ravel_bench.data import EntityTypeRelease, default_cache_dir
from ravel_bench.engine.blocks import hidden_size, site_name
from ravel_bench.engine.interchange import source_vectors
from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass
class AttributeActivations:
    """Vectors of (template, entity) prompts with the entities' attribute values.

    Args:
        vectors: ``[rows, d_model]`` float32 on the CPU; row ``i`` is ``templates[i] %
            entities[i]`` read at the entity's last token.
        templates: the template of each row.
        entities: the entity of each row.
        labels: ``{attribute: [value of row i's entity, ...]}`` from the release.
        layer: the site's layer (``-1`` = the stream entering block 0).
        entity_type: the RAVEL entity type.
    """

    vectors: torch.Tensor
    templates: list[str]
    entities: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)
    layer: int = -1
    entity_type: str = ""

    def label_ids(self, attribute: str) -> tuple[torch.Tensor, list[str]]:
        """Return the class index of each row, ``[rows]`` long, and the sorted class names.

        Raises:
            ConfigError: ``attribute`` has no labels here.
        """
        if attribute not in self.labels:
            raise ConfigError(
                f"no labels for attribute {attribute!r}; collected: {sorted(self.labels)}"
            )
        classes = sorted(set(self.labels[attribute]))
        index = {c: i for i, c in enumerate(classes)}
        return torch.tensor([index[v] for v in self.labels[attribute]], dtype=torch.long), classes


def activation_cache_dir() -> Path:
    """Return the default activation cache folder, ``default_cache_dir() / "activations"``."""
    return default_cache_dir() / "activations"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-") or "model"


def _cache_key(
    model_id: str,
    model_revision: str | None,
    layer: int,
    entity_type: str,
    templates: Sequence[str],
    entities: Sequence[str],
) -> str:
    payload = json.dumps(
        {
            "model_id": model_id,
            "model_revision": model_revision,
            "layer": layer,
            "entity_type": entity_type,
            "prompts": [list(templates), list(entities)],
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _cache_paths(
    cache_dir: Path, model_id: str, layer: int, entity_type: str, key: str
) -> tuple[Path, Path]:
    stem = cache_dir / _slug(model_id) / f"{site_name(layer)}-{_slug(entity_type)}-{key[:16]}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _read_cache(
    tensor_path: Path, sidecar_path: Path, templates: list[str], entities: list[str], d_model: int
) -> torch.Tensor | None:
    if not (tensor_path.is_file() and sidecar_path.is_file()):
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        vectors = load_file(tensor_path)["vectors"]
    except (OSError, ValueError, KeyError) as err:
        logger.info("ignoring unreadable activation cache %s (%s)", tensor_path, err)
        return None
    if (
        sidecar.get("templates") != templates
        or sidecar.get("entities") != entities
        or tuple(vectors.shape) != (len(templates), d_model)
    ):
        logger.info("ignoring activation cache %s: it holds other prompts", tensor_path)
        return None
    return vectors


def _write_cache(
    tensor_path: Path, sidecar_path: Path, vectors: torch.Tensor, sidecar: dict
) -> None:
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    # Write to temporary names, then rename: a killed run never leaves half a file.
    tmp_tensor = tensor_path.with_name(tensor_path.name + ".tmp")
    tmp_sidecar = sidecar_path.with_name(sidecar_path.name + ".tmp")
    save_file({"vectors": vectors.contiguous()}, str(tmp_tensor))
    tmp_sidecar.write_text(json.dumps(sidecar, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp_tensor, tensor_path)
    os.replace(tmp_sidecar, sidecar_path)


def _model_id(model: nn.Module, model_id: str | None) -> str:
    if model_id:
        return model_id
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")


def collect_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    entities: Sequence[str],
    layer: int,
    *,
    model_id: str | None = None,
    model_revision: str | None = None,
    entity_type: str = "",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """Return the residual-stream vector at the entity's last token of each prompt.

    Each distinct ``(template, entity)`` runs once, and only up to ``layer``. The result is read
    from the cache when the same model, layer, entity type and prompt list were collected before.

    Args:
        model, tokenizer: a causal LM in eval mode and its fast tokenizer.
        templates, entities: row ``i`` is the prompt ``templates[i] % entities[i]``.
        layer: the site (``-1`` = the stream entering block 0, else the block index).
        model_id, model_revision: name the model in the cache key; ``model_id`` defaults to
            ``model.config._name_or_path``. Without an id nothing is cached.
        entity_type: part of the cache key and the sidecar.
        cache_dir: cache folder; ``None``: :func:`activation_cache_dir`.
        use_cache: read and write the cache.
        batch_size: prompts per forward pass.

    Returns:
        ``[rows, d_model]`` float32 vectors on the CPU.
    """
    templates, entities = list(templates), list(entities)
    if len(templates) != len(entities):
        raise ConfigError(
            f"{len(templates)} templates but {len(entities)} entities: give one of each per row"
        )
    d_model = hidden_size(model)
    name = _model_id(model, model_id)
    paths = None
    if use_cache and name:
        key = _cache_key(name, model_revision, layer, entity_type, templates, entities)
        folder = Path(cache_dir) if cache_dir is not None else activation_cache_dir()
        paths = _cache_paths(folder, name, layer, entity_type, key)
        cached = _read_cache(*paths, templates, entities, d_model)
        if cached is not None:
            logger.info("activations read from cache: %d rows from %s", len(cached), paths[0])
            return cached
    elif use_cache:
        logger.debug("activations not cached: the model has no id")
    vectors = source_vectors(
        model,
        tokenizer,
        templates,
        entities,
        layer,
        batch_size=batch_size,
        show_progress=show_progress,
    )  # [rows, d_model], model dtype and device
    vectors = vectors.float().cpu()  # [rows, d_model]
    if paths is not None:
        sidecar = {
            "format_version": CACHE_FORMAT_VERSION,
            "model_id": name,
            "model_revision": model_revision,
            "layer": layer,
            "site": site_name(layer),
            "position": "entity_last",
            "entity_type": entity_type,
            "d_model": d_model,
            "n_rows": len(templates),
            "dtype": "float32",
            "prompts_sha256": key,
            "ravel_bench_version": __version__,
            "templates": templates,
            "entities": entities,
        }
        _write_cache(*paths, vectors, sidecar)
        logger.info("activations cached: %d rows at %s", len(vectors), paths[0])
    return vectors


def instance_prompts(
    instance: RavelInstance, split: str = "train", attributes: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Return the (templates, entities) rows of an instance's entities x kept templates.

    Args:
        instance: a RAVEL instance.
        split: entity split and template split used (``"train"`` for fitting featurizers).
        attributes: only templates of these attributes; ``None``: every attribute's.

    Returns:
        Two aligned lists, template-major, in the instance's metadata order.

    Raises:
        ConfigError: no entity or no template of that split.
    """
    entities = [e for e, s in instance.metadata["entities"].items() if s == split]
    templates = [
        t
        for t, info in instance.metadata["templates"].items()
        if info["split"] == split and (attributes is None or info["attribute"] in attributes)
    ]
    if not entities or not templates:
        raise ConfigError(
            f"the instance has {len(entities)} {split} entities and {len(templates)} {split} "
            "templates; both must be non-empty to collect activations",
            hint="build the instance with more entities or templates per split",
        )
    rows_t = [t for t in templates for _ in entities]
    rows_e = [e for _ in templates for e in entities]
    return rows_t, rows_e


def collect_attribute_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instance: RavelInstance,
    release_type: EntityTypeRelease,
    layer: int,
    *,
    attributes: Sequence[str] | None = None,
    split: str = "train",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    show_progress: bool = True,
) -> AttributeActivations:
    """Collect the vectors of an instance's ``split`` entities x kept ``split`` templates.

    Every kept template of the split is used, whatever attribute it queries: the entity's
    representation is the object of study, and the label of a row is the entity's value of each
    attribute (``release_type.entity_attributes[entity][attribute]``).

    Args:
        model, tokenizer: the instance's model, in eval mode, and its fast tokenizer.
        instance: a RAVEL instance of ``release_type.entity_type``.
        release_type: ``load_release(path).types[entity_type]``.
        layer: the site (``-1`` = the stream entering block 0, else the block index).
        attributes: attributes to label; ``None``: the instance's.
        split: ``"train"`` (the default) or ``"val"``/``"test"``.
        cache_dir, use_cache, batch_size: see :func:`collect_activations`.

    Returns:
        An :class:`AttributeActivations` with ``[rows, d_model]`` vectors.

    Raises:
        ConfigError: the release is of another entity type, or the instance has no rows.
        DataFormatError: an entity has no value for an attribute in the release.
    """
    entity_type = instance.metadata["entity_type"]
    if release_type.entity_type != entity_type:
        raise ConfigError(
            f"the release is for {release_type.entity_type!r} but the instance is for "
            f"{entity_type!r}; pass load_release(...).types[{entity_type!r}]"
        )
    attributes = list(attributes) if attributes is not None else instance.attributes
    templates, entities = instance_prompts(instance, split)
    labels: dict[str, list[str]] = {}
    for attribute in attributes:
        by_entity = {
            e: release_type.entity_attributes.get(e, {}).get(attribute, "") for e in entities
        }
        missing = [e for e, value in by_entity.items() if not value.strip()]
        if missing:
            raise DataFormatError(
                f"{entity_type} entities {missing[:5]} have no {attribute!r} value in the release",
                hint="rebuild the instance from this release",
            )
        labels[attribute] = [by_entity[e] for e in entities]
    vectors = collect_activations(
        model,
        tokenizer,
        templates,
        entities,
        layer,
        model_id=instance.metadata.get("model_id") or None,
        model_revision=instance.metadata.get("model_revision"),
        entity_type=entity_type,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    logger.info(
        "activations at %s: %d %s entities x %d templates",
        site_name(layer),
        len(set(entities)),
        split,
        len(set(templates)),
    )
    return AttributeActivations(
        vectors=vectors,
        templates=templates,
        entities=entities,
        labels=labels,
        layer=layer,
        entity_type=entity_type,
    )
