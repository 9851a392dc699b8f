"""Featurizers as Hub model repos that load on top of their base model, and ``push`` for every artifact.

A featurizer folder (or Hub model repo) holds::

    model.safetensors    the featurizer's tensors (safetensors only; pickles are never read)
    config.json          its FeaturizerConfig: method, base model id and revision, layer, site, ...
    README.md            card rendered from hub_cards/featurizer_card.md on every save
    ravel_results.json   the scores it got and the training recipe

:func:`load_featurizer` rebuilds it strictly: every config field must be present and the tensors
must have exactly the names, shapes and dtypes the config implies. :func:`load_intervenable` also
loads the base model named in the config (a PEFT adapter repo too) and checks its hidden size
and block count. :func:`push` uploads a dataset, instance, metric or featurizer folder after
checking it has the files its kind needs. No code from a repo is ever run.
"""

# torch, transformers and the engine are imported where used, so that importing this module (the
# CLI's `push` parser does) stays light.
import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)

from ravel_bench import __version__
from ravel_bench.errors import (
    ConfigError,
    DataFormatError,
    IncompatibleModelError,
    RavelBenchError,
    SourceUnavailableError,
)

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ravel_bench.evaluation import EvalResult
    from ravel_bench.featurizers.base import Featurizer, FeaturizerConfig
    from ravel_bench.instance.build import RavelInstance

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RESULTS_FILE = "ravel_results.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SCORE_KEYS: tuple[str, ...] = ("cause", "isolate", "disentangle")
# Config fields repeated in ravel_results.json, so the file reads on its own.
_RESULT_FIELDS: tuple[str, ...] = (
    "method",
    "base_model",
    "base_model_revision",
    "entity_type",
    "attribute",
    "layer",
    "site",
    "k",
)
# Config field annotation -> (accepted JSON types, name in messages).
_FIELD_TYPES: dict[Any, tuple[type | tuple[type, ...], str]] = {
    int: (int, "an integer"),
    str: (str, "a string"),
    bool: (bool, "true or false"),
    str | None: ((str, type(None)), "a string or null"),
}
# Owner/name Hub ids (what a card's `base_model` and `datasets` may hold).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# safetensors dtype code -> torch dtype name.
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_METHOD_DESCRIPTIONS: dict[str, str] = {
    "noop": "identity over the neurons with no feature swapped (a control: Cause 0, Isolate 1)",
    "full": "identity over the neurons with every feature swapped (the full-vector swap)",
    "random": "k random orthonormal directions (a subspace of the same size as DAS's)",
    "das": "distributed alignment search: k learned orthonormal directions",
    "mdas": "multi-task distributed alignment search: k learned orthonormal directions",
    "dbm": "a learned binary mask over the neurons (differential binary masking)",
    "mdbm": "a learned binary mask over the neurons, multi-task (MDBM)",
    "pca": "the top principal components of the entity representations",
    "sae": "a sparse autoencoder's latents, with the attribute's latents selected",
    "rlap": "the directions removed by relaxed linear adversarial concept erasure (RLACE)",
}


# ---------------------------------------------------------------------------------------------
# Saving


def _is_hub_id(value: str) -> bool:
    """Whether ``value`` reads as an ``owner/name`` Hub id rather than a local path."""
    return bool(_HUB_ID.match(value)) and not Path(value).exists()


def _check_scores(scores: Mapping) -> list[dict[str, Any]]:
    """Flatten ``{setting: {split: {cause, isolate, disentangle, ...}}}`` into table rows.

    Raises:
        ConfigError: the nesting or a score is not as documented.
    """
    rows = []
    for setting, by_split in scores.items():
        if not isinstance(by_split, Mapping):
            raise ConfigError(
                f"scores[{setting!r}] must map split names to score dicts, found "
                f"{type(by_split).__name__}",
                hint='pass e.g. {"entity": {"test": {"cause": 0.9, "isolate": 0.6, '
                '"disentangle": 0.75}}}',
            )
        for split, values in by_split.items():
            missing = [k for k in SCORE_KEYS if not isinstance(values, Mapping) or k not in values]
            if missing:
                raise ConfigError(
                    f"scores[{setting!r}][{split!r}] must hold {', '.join(SCORE_KEYS)}; "
                    f"missing {', '.join(missing)}",
                    hint="use EvalResult.scores or scores_from_results([...])",
                )
            for key in SCORE_KEYS:
                value = values[key]
                if value is not None and not (
                    isinstance(value, int | float) and math.isfinite(value)
                ):
                    raise ConfigError(
                        f"scores[{setting!r}][{split!r}][{key!r}]={value!r} must be a finite "
                        "number or None"
                    )
            rows.append({"setting": setting, "split": split, **values})
    return rows


def scores_from_results(results: Sequence["EvalResult"]) -> dict[str, dict[str, dict]]:
    """Collect evaluation results into the ``scores`` argument of :func:`save_featurizer`.

    Args:
        results: results of :func:`ravel_bench.evaluation.evaluate_featurizer`, one per
            (setting, split).

    Returns:
        ``{setting: {split: {"cause", "isolate", "disentangle", "n_pairs"}}}``.
    """
    scores: dict[str, dict[str, dict]] = {}
    for result in results:
        setting, split = result.config["setting"], result.config["split"]
        scores.setdefault(setting, {})[split] = {
            **{key: result.scores[key] for key in SCORE_KEYS},
            "n_pairs": result.config.get("n_pairs"),
        }
    return scores


def _format_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_featurizer_card(
    featurizer: "Featurizer",
    *,
    scores: Mapping | None = None,
    training: Mapping | None = None,
    repo_id: str | None = None,
    datasets: Sequence[str] = (),
) -> str:
    """Render the featurizer card (``README.md``) from ``hub_cards/featurizer_card.md``.

    ``base_model`` (with ``base_model_relation: adapter``) goes into the YAML header only when the
    config's base model is an ``owner/name`` Hub id: the Hub rejects other values there. Local
    paths and the embedded toy model are named in the body instead.

    Args:
        featurizer: the featurizer; its config fills the card.
        scores: ``{setting: {split: {"cause", "isolate", "disentangle", ...}}}``.
        training: the training recipe, ``{name: JSON value}``.
        repo_id: the Hub id used in the card's loading example (default ``ORG/NAME``).
        datasets: Hub ids of the dataset and instance repos it was trained or evaluated on.

    Raises:
        ConfigError: ``scores`` is not nested as documented.
    """
    from ravel_bench.engine.blocks import site_name

    config = featurizer.config
    score_rows = _check_scores(scores or {})
    header: dict[str, Any] = {}
    if config.base_model and _is_hub_id(config.base_model):
        header["base_model"] = config.base_model
        header["base_model_relation"] = "adapter"
    header["library_name"] = "ravel-bench"
    header["license"] = "mit"
    hub_datasets = [d for d in datasets if _HUB_ID.match(d)]
    if hub_datasets:
        header["datasets"] = hub_datasets
    header["tags"] = sorted(
        {"ravel", "ravel-bench", "interpretability", "featurizer", "causal-abstraction"}
        | {config.method}
        | ({config.entity_type} if config.entity_type else set())
    )
    tensors = [
        {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in featurizer.state_dict().items()
    ]
    text = resources.files("ravel_bench.hub_cards").joinpath("featurizer_card.md").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["score"] = _format_score
    env.filters["value"] = _format_value
    return env.from_string(text).render(
        yaml_header=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip("\n"),
        c=config,
        base_model_is_hub_id="base_model" in header,
        method_description=_METHOD_DESCRIPTIONS.get(config.method, "a custom featurizer"),
        site=config.site or site_name(config.layer),
        tensors=tensors,
        has_matrix=any(len(t["shape"]) == 2 for t in tensors),
        repo_id=repo_id or "ORG/NAME",
        score_rows=score_rows,
        training=dict(training or {}),
        version=__version__,
    )


def save_featurizer(
    featurizer: "Featurizer",
    out_dir: str | Path,
    *,
    scores: Mapping | None = None,
    training: Mapping | None = None,
    repo_id: str | None = None,
    datasets: Sequence[str] = (),
) -> Path:
    """Write ``featurizer`` as a Hub model repo folder.

    ``save_pretrained`` writes ``model.safetensors`` and ``config.json``; the card
    (``README.md``) and ``ravel_results.json`` are then rewritten on every call (the mixin never
    overwrites an existing card), so they always describe this call's scores and recipe.

    Args:
        featurizer: any registered featurizer.
        out_dir: the folder to write (created if needed; existing files are replaced).
        scores: ``{setting: {split: {"cause", "isolate", "disentangle", ...}}}``, e.g. from
            :func:`scores_from_results`; None: "not evaluated".
        training: the training recipe (JSON values): data, steps, learning rate, seed, ...
        repo_id: Hub id shown in the card's loading example.
        datasets: Hub ids of the dataset and instance repos, for the card's metadata.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: a float tensor's dtype differs from ``config.dtype``, or ``scores`` or
            ``training`` is malformed.
    """
    config = featurizer.config
    for name, tensor in featurizer.state_dict().items():
        if tensor.is_floating_point() and str(tensor.dtype).removeprefix("torch.") != config.dtype:
            raise ConfigError(
                f"featurizer tensor {name!r} is {tensor.dtype}, but its config says "
                f"dtype={config.dtype!r}",
                hint="save featurizers in their config's dtype (float32)",
            )
    _check_scores(scores or {})
    try:
        results = json.dumps(
            {
                "ravel_bench_version": __version__,
                "featurizer": {key: getattr(config, key) for key in _RESULT_FIELDS},
                "scores": dict(scores or {}),
                "training": dict(training or {}),
            },
            indent=2,
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"scores and training must hold finite JSON values only: {exc}",
            hint="convert tensors and numpy values with float() / .tolist()",
        ) from exc
    card = render_featurizer_card(
        featurizer, scores=scores, training=training, repo_id=repo_id, datasets=datasets
    )
    out = Path(out_dir)
    featurizer.save_pretrained(out)
    (out / CARD_FILE).write_text(card)
    (out / RESULTS_FILE).write_text(results + "\n")
    logger.info("featurizer %s saved to %s", config.method, out)
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def _resolve_file(repo_id_or_path: str | Path, filename: str, revision: str | None) -> Path:
    """Return the local path of ``filename`` in a featurizer folder or Hub model repo.

    Raises:
        DataFormatError: the folder or repo has no such file.
        SourceUnavailableError: the repo cannot be reached and is not in the local cache.
        ConfigError: not a folder, and not a valid repo id.
    """
    source = str(repo_id_or_path)
    folder = Path(source)
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise DataFormatError(
                f"{folder} is not a featurizer folder: expected {filename}, found none",
                hint="save featurizers with ravel_bench.hub.save_featurizer",
            )
        return path
    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except HFValidationError:
        raise ConfigError(
            f"{source!r} is neither an existing folder nor a Hub repo id (owner/name)",
            hint="check the path, or pass a repo id like 'org/das-city-country'",
        ) from None
    except LocalEntryNotFoundError as exc:
        raise SourceUnavailableError(
            f"{source}: {filename} is not in the local Hub cache and the Hub cannot be reached "
            f"({exc.__class__.__name__})",
            hint="go online (unset HF_HUB_OFFLINE) once, or download the repo with "
            f"`hf download {source}`",
        ) from exc
    except EntryNotFoundError:
        raise DataFormatError(
            f"Hub repo {source} is not a featurizer repo: expected {filename}, found none",
            hint="check the repo id and revision",
        ) from None
    except HfHubHTTPError as exc:
        raise SourceUnavailableError(
            f"cannot download {filename} from Hub repo {source}: {exc}",
            hint="check the repo id, the revision and your token (HF_TOKEN) for private repos",
        ) from exc


def _config_from_json(path: Path) -> "FeaturizerConfig":
    """Read and check ``config.json``: schema version, every field present, no unknown field.

    Raises:
        DataFormatError: malformed JSON, another schema version, missing or unknown fields, or
            out-of-range values.
    """
    from ravel_bench.featurizers.base import SCHEMA_VERSION, FeaturizerConfig

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(
            f"{path}: expected a JSON object, found malformed JSON ({exc})"
        ) from exc
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise DataFormatError(
            f"{path}: expected featurizer schema_version {SCHEMA_VERSION}, found {version!r}",
            hint="upgrade ravel-bench" if newer else "re-save the featurizer with this ravel-bench",
        )
    fields = [field.name for field in dataclasses.fields(FeaturizerConfig)]
    missing = [name for name in fields if name not in data]
    if missing:
        raise DataFormatError(
            f"{path}: missing featurizer config fields {', '.join(missing)}",
            hint="the file was edited by hand or written by another tool; re-save the featurizer "
            "with ravel_bench.hub.save_featurizer",
        )
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DataFormatError(
            f"{path}: unknown featurizer config fields {', '.join(unknown)} for schema_version "
            f"{SCHEMA_VERSION}",
            hint="remove them, or upgrade ravel-bench if a newer version wrote the file",
        )
    for name, annotation in typing.get_type_hints(FeaturizerConfig).items():
        value = data[name]
        expected, type_name = _FIELD_TYPES[annotation]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DataFormatError(
                f"{path}: field {name!r} must be {type_name}, found {value!r}",
                hint="re-save the featurizer with ravel_bench.hub.save_featurizer",
            )
    try:
        return FeaturizerConfig(**data)
    except ConfigError as exc:
        raise DataFormatError(f"{path}: {exc}") from exc


def _read_tensors(path: Path, expected: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Read ``path``, requiring exactly the tensors, shapes and dtypes of ``expected``.

    Raises:
        DataFormatError: an unreadable (truncated, corrupt) file, missing or extra tensors, a
            shape or dtype that differs, or non-finite values.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    hint = "re-download or re-save the featurizer; the file is damaged or was edited"
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                raise DataFormatError(
                    f"{path}: expected tensors {sorted(expected)}, found {sorted(names)}"
                    f" (missing {missing}, unexpected {extra})",
                    hint=hint,
                )
            for name, want in expected.items():
                info = f.get_slice(name)
                shape = list(info.get_shape())
                dtype = _SAFETENSORS_DTYPES.get(info.get_dtype(), info.get_dtype())
                want_dtype = str(want.dtype).removeprefix("torch.")
                if shape != list(want.shape) or dtype != want_dtype:
                    raise DataFormatError(
                        f"{path}: tensor {name!r} should be {list(want.shape)} {want_dtype} "
                        f"(from config.json), found {shape} {dtype}",
                        hint=hint,
                    )
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, RavelBenchError):
            raise
        raise DataFormatError(
            f"{path}: expected a safetensors file, found an unreadable one ({exc})", hint=hint
        ) from exc
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DataFormatError(f"{path}: tensor {name!r} holds NaN or inf values", hint=hint)
    return tensors


def load_featurizer(repo_id_or_path: str | Path, *, revision: str | None = None) -> "Featurizer":
    """Load a featurizer from a folder or Hub model repo, strictly.

    Only ``config.json`` and ``model.safetensors`` are read; pickles are never loaded and no
    code from the repo runs. Repo ids work offline (``HF_HUB_OFFLINE=1``) from the local cache.

    Args:
        repo_id_or_path: a folder written by :func:`save_featurizer`, or a Hub repo id.
        revision: Hub revision (branch, tag or commit); ignored for folders.

    Returns:
        The featurizer, in eval mode, on the CPU.

    Raises:
        DataFormatError: a missing or malformed file, another schema version, missing config
            fields, an unknown method, or tensors that do not match the config.
        SourceUnavailableError: a repo not in the cache and the Hub out of reach.

    Example:
        >>> import tempfile
        >>> from ravel_bench.featurizers import random_subspace
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_featurizer(random_subspace(16, 4, seed=1), tmp)
        ...     print(load_featurizer(folder).directions.shape)
        torch.Size([4, 16])
    """
    from ravel_bench.featurizers.registry import featurizer_class

    config_path = _resolve_file(repo_id_or_path, CONFIG_FILE, revision)
    config = _config_from_json(config_path)
    try:
        cls = featurizer_class(config.method)
    except ConfigError as exc:
        raise DataFormatError(
            f"{config_path}: {exc}",
            hint="import the module that registers this method, or upgrade ravel-bench",
        ) from exc
    try:
        featurizer = cls(config)
    except ConfigError as exc:
        raise DataFormatError(f"{config_path}: {exc}") from exc
    weights_path = _resolve_file(repo_id_or_path, WEIGHTS_FILE, revision)
    tensors = _read_tensors(weights_path, featurizer.state_dict())
    featurizer.load_state_dict(tensors, strict=True)
    try:
        featurizer.check_tensors()
    except ConfigError as exc:
        raise DataFormatError(
            f"{weights_path}: {exc}",
            hint="config.json and model.safetensors disagree: one was edited; re-save the "
            "featurizer with ravel_bench.hub.save_featurizer",
        ) from exc
    logger.info("featurizer %s loaded from %s", config.method, repo_id_or_path)
    return featurizer.eval()


# ---------------------------------------------------------------------------------------------
# Featurizer + base model


@dataclass
class Intervenable:
    """A base model with a featurizer at its layer: ready for interchange interventions.

    Args:
        model: the base causal LM, in eval mode.
        tokenizer: its tokenizer.
        featurizer: the featurizer, on the model's device.
        layer: intervention site (``-1`` = embeddings, else the block index).
        name: where the featurizer came from (repo id or folder), for results and logs.
    """

    model: "nn.Module"
    tokenizer: "PreTrainedTokenizerBase"
    featurizer: "Featurizer"
    layer: int
    name: str = ""

    @property
    def config(self) -> "FeaturizerConfig":
        """The featurizer's config."""
        return self.featurizer.config

    def generate(
        self,
        base_templates: Sequence[str],
        base_entities: Sequence[str],
        source_templates: Sequence[str],
        source_entities: Sequence[str],
        max_new_tokens: int = 3,
        *,
        batch_size: int = 64,
    ) -> list[str]:
        """Generate greedily from base prompts with the featurizer's features from the sources.

        Prompts are ``template % entity``; the intervention is at each entity's last token.

        Args:
            base_templates, base_entities: the base prompts.
            source_templates, source_entities: the source prompts, one per base prompt.
            max_new_tokens: greedy tokens to generate (3 in the RAVEL protocol).
            batch_size: prompts per forward pass.

        Returns:
            The generated text of each base prompt.

        Raises:
            ConfigError: the four lists differ in length.
        """
        from ravel_bench.engine.interchange import intervened_generate, source_vectors

        lengths = {len(base_templates), len(base_entities)}
        lengths |= {len(source_templates), len(source_entities)}
        if len(lengths) != 1:
            raise ConfigError(
                "base_templates, base_entities, source_templates and source_entities must have "
                f"the same length, found {len(base_templates)}, {len(base_entities)}, "
                f"{len(source_templates)}, {len(source_entities)}"
            )
        source = source_vectors(
            self.model,
            self.tokenizer,
            source_templates,
            source_entities,
            self.layer,
            batch_size=batch_size,
            show_progress=False,
        )  # [rows, d_model]
        generated = intervened_generate(
            self.model,
            self.tokenizer,
            base_templates,
            base_entities,
            self.layer,
            self.featurizer.intervene,
            source,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            show_progress=False,
        )  # [rows, max_new_tokens]
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)

    def evaluate(
        self,
        instance: "RavelInstance | str | Path",
        setting: str,
        split: str,
        *,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> "EvalResult":
        """Score the featurizer on one instance split (Cause, Isolate, Disentangle).

        A featurizer trained for one attribute is scored with that attribute as the target; a
        featurizer without one (a baseline) for every attribute of the instance.

        Args:
            instance: a :class:`RavelInstance` or an instance folder.
            setting, split: ``entity``/``context`` (or ``train``) and ``val``/``test``.
            batch_size: prompts per forward pass.
            show_progress: show progress bars.

        Raises:
            ConfigError: the instance is for another entity type, or lacks the attribute.
        """
        from ravel_bench.evaluation import evaluate_featurizer
        from ravel_bench.instance.build import RavelInstance
        from ravel_bench.instance.repo import load_instance

        if not isinstance(instance, RavelInstance):
            instance = load_instance(instance)
        config = self.config
        meta = instance.metadata
        if config.entity_type and meta.get("entity_type") not in ("", None, config.entity_type):
            raise ConfigError(
                f"featurizer {self.name!r} was trained on {config.entity_type!r} entities; this "
                f"instance is for {meta['entity_type']!r}",
                hint=f"evaluate it on a {config.entity_type} instance",
            )
        featurizers: Featurizer | dict[str, Featurizer] = self.featurizer
        if config.attribute:
            if config.attribute not in instance.attributes:
                raise ConfigError(
                    f"featurizer {self.name!r} targets attribute {config.attribute!r}; the "
                    f"instance has {instance.attributes}",
                    hint="build the instance with that attribute",
                )
            featurizers = {config.attribute: self.featurizer}
        if meta.get("model_id") and config.base_model and meta["model_id"] != config.base_model:
            logger.warning(
                "instance was built for %s, featurizer trained on %s",
                meta["model_id"],
                config.base_model,
            )
        return evaluate_featurizer(
            self.model,
            self.tokenizer,
            instance,
            featurizers,
            self.layer,
            setting,
            split,
            batch_size=batch_size,
            show_progress=show_progress,
            config={"featurizer": self.name or config.method, "method": config.method},
        )


def _adapter_config(model: str, revision: str | None) -> dict | None:
    """Return the ``adapter_config.json`` of a PEFT adapter folder or repo, else None."""
    folder = Path(model)
    if folder.is_dir():
        path = folder / ADAPTER_CONFIG_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(
                f"{path}: malformed JSON ({exc})",
                hint="this folder looks like a PEFT adapter; repair or remove adapter_config.json",
            ) from exc
    if not _HUB_ID.match(model):  # toy names and the like: not a repo to probe
        return None
    try:
        return json.loads(
            Path(hf_hub_download(model, ADAPTER_CONFIG_FILE, revision=revision)).read_text()
        )
    except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None


def _load_peft(model: str, adapter: dict, revision: str | None, dtype: str, device: str | None):
    """Load a PEFT adapter and its base model with ``AutoPeftModelForCausalLM``."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from ravel_bench.models import _DTYPES, default_device

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    device = device or default_device()
    logger.info("loading PEFT adapter %s on %s", model, adapter.get("base_model_name_or_path"))
    lm = AutoPeftModelForCausalLM.from_pretrained(model, revision=revision, dtype=_DTYPES[dtype])
    if device != "auto":
        lm = lm.to(device)
    lm.eval().requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    except (OSError, ValueError):  # adapters often ship without a tokenizer
        tokenizer = AutoTokenizer.from_pretrained(
            adapter["base_model_name_or_path"], revision=adapter.get("revision")
        )
    return lm, tokenizer


def check_compatible(featurizer: "Featurizer", model: "nn.Module", name: str = "") -> None:
    """Check that ``model`` has the featurizer's hidden size, block count and layer.

    Raises:
        IncompatibleModelError: naming the numbers of both.
    """
    from ravel_bench.engine.blocks import decoder_blocks, hidden_size

    config = featurizer.config
    d_model, n_layers = hidden_size(model), len(decoder_blocks(model))
    trained_on = config.base_model or "an unrecorded model"
    layers = f", {config.n_layers} layers" if config.n_layers else ""
    if d_model != config.d_model or (config.n_layers and n_layers != config.n_layers):
        raise IncompatibleModelError(
            f"featurizer {name or config.method!r} was trained on {trained_on} "
            f"(d_model={config.d_model}{layers}); this model has hidden_size={d_model}, "
            f"{n_layers} layers; load that base model or retrain"
        )
    if not -1 <= config.layer < n_layers:
        raise IncompatibleModelError(
            f"featurizer {name or config.method!r} intervenes at layer {config.layer}; this "
            f"model has {n_layers} blocks (layers -1..{n_layers - 1}); load the base model it "
            "was trained on or retrain"
        )


def load_intervenable(
    repo_id_or_path: str | Path,
    *,
    revision: str | None = None,
    model: "nn.Module | None" = None,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    dtype: str = "float32",
    device: str | None = None,
) -> Intervenable:
    """Load a featurizer and the base model it was trained on, checked against each other.

    Args:
        repo_id_or_path: the featurizer's folder or Hub repo id.
        revision: the featurizer repo's revision (the base model's comes from its config).
        model, tokenizer: use this model instead of loading ``config.base_model``.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for a loaded base model.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default cuda if available.

    Returns:
        An :class:`Intervenable`.

    Raises:
        IncompatibleModelError: the model's hidden size or block count differs from the config.
        ConfigError: no base model recorded and none passed, or a model without a tokenizer.
        DataFormatError, SourceUnavailableError: from :func:`load_featurizer`.
    """
    from ravel_bench.engine.interchange import model_device

    featurizer = load_featurizer(repo_id_or_path, revision=revision)
    config = featurizer.config
    name = str(repo_id_or_path)
    if model is not None:
        if tokenizer is None:
            raise ConfigError(
                "load_intervenable got a model without its tokenizer", hint="pass tokenizer= too"
            )
    elif not config.base_model:
        raise ConfigError(
            f"featurizer {name!r} records no base model",
            hint="pass model= and tokenizer= explicitly",
        )
    else:
        adapter = _adapter_config(config.base_model, config.base_model_revision)
        if adapter is not None:
            model, tokenizer = _load_peft(
                config.base_model, adapter, config.base_model_revision, dtype, device
            )
        else:
            from ravel_bench.models import load_model

            loaded = load_model(
                config.base_model,
                revision=config.base_model_revision,
                dtype=dtype,
                device=device,
                show_progress=False,
            )
            model, tokenizer = loaded.model, loaded.tokenizer
    check_compatible(featurizer, model, name)
    featurizer = featurizer.to(model_device(model))
    return Intervenable(model, tokenizer, featurizer, config.layer, name)


# ---------------------------------------------------------------------------------------------
# Pushing


@dataclass(frozen=True)
class _Kind:
    """What one artifact kind needs.

    Args:
        repo_type: Hub repo type it goes to.
        required: files the folder must hold.
        need_parquet: the folder must hold parquet files too.
    """

    repo_type: str
    required: tuple[str, ...]
    need_parquet: bool = False


PUSH_KINDS: dict[str, _Kind] = {
    "dataset": _Kind("dataset", (CARD_FILE,), need_parquet=True),
    "instance": _Kind("dataset", ("instance.json", CARD_FILE), need_parquet=True),
    "metric": _Kind("space", (CARD_FILE,)),
    "featurizer": _Kind("model", (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)),
}
_IGNORE = ["__pycache__/*", "*/__pycache__/*", "*.pyc", ".cache/*"]
_BUILD_HINTS = {
    "dataset": "build it with `ravel-bench dataset build --out DIR`",
    "instance": "build it with `ravel-bench instance --out DIR`",
    "metric": "push the metric/ravel_disentangle folder",
    "featurizer": "save it with ravel_bench.hub.save_featurizer",
}


def _card_header(path: Path) -> dict:
    """Return the YAML header of a card, checking that it parses."""
    text = path.read_text()
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, flags=re.DOTALL)
    if match is None:
        raise DataFormatError(
            f"{path}: expected a YAML header between '---' lines, found none",
            hint="render the card with ravel-bench instead of writing it by hand",
        )
    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise DataFormatError(f"{path}: the YAML header does not parse ({exc})") from exc
    if not isinstance(header, dict):
        raise DataFormatError(f"{path}: expected a YAML mapping in the header")
    return header


def check_push_folder(kind: str, folder: str | Path, repo_id: str) -> dict:
    """Check that ``folder`` holds what a ``kind`` repo needs; return its card's YAML header.

    Raises:
        ConfigError: unknown kind, a bad repo id, or (metric) a repo name that ``evaluate`` could
            not load.
        DataFormatError: a missing file, a card without a YAML header, a featurizer that does not
            load.
    """
    if kind not in PUSH_KINDS:
        raise ConfigError(f"unknown artifact kind {kind!r}; expected one of {sorted(PUSH_KINDS)}")
    if not _HUB_ID.match(repo_id):
        raise ConfigError(
            f"repo id {repo_id!r} is not of the form owner/name", hint="pass --repo-id ORG/NAME"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder", hint=f"pass the {kind} folder to push")
    spec = PUSH_KINDS[kind]
    missing = [name for name in spec.required if not (folder / name).is_file()]
    if spec.need_parquet and not any(folder.rglob("*.parquet")):
        missing.append("*.parquet data files")
    if kind == "metric":
        # evaluate.load("owner/name") downloads `name.py` from the Space.
        script = repo_id.split("/")[1] + ".py"
        if not (folder / script).is_file():
            scripts = sorted(p.name for p in folder.glob("*.py") if p.name != "app.py")
            if not scripts:
                missing.append(script)
            else:
                raise ConfigError(
                    f"evaluate.load({repo_id!r}) looks for {script} in the Space; {folder} "
                    f"has {', '.join(scripts)}",
                    hint=f"pass --repo-id {repo_id.split('/')[0]}/{Path(scripts[0]).stem}",
                )
    if missing:
        raise DataFormatError(
            f"{folder} is not a {kind} folder: expected {', '.join(spec.required)}"
            + (" and parquet files" if spec.need_parquet else "")
            + f"; missing {', '.join(missing)}",
            hint=_BUILD_HINTS[kind],
        )
    header = _card_header(folder / CARD_FILE)
    if spec.repo_type == "dataset" and not header.get("configs"):
        raise DataFormatError(
            f"{folder / CARD_FILE}: expected a `configs:` list in the YAML header (it maps configs "
            "to parquet files for load_dataset), found none",
            hint=_BUILD_HINTS[kind],
        )
    if kind == "metric" and header.get("sdk", "static") == "static":
        if not (folder / "index.html").is_file():
            raise DataFormatError(
                f"{folder} is a static Space (sdk: static) without index.html, the page it serves",
                hint="add index.html (metric/ravel_disentangle/ has one)",
            )
    if kind == "featurizer":
        load_featurizer(folder)  # refuses a damaged or hand-edited featurizer before upload
    return header


def push(
    kind: str,
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a dataset, instance, metric or featurizer folder to a Hub repo.

    Datasets and instances go to dataset repos, featurizers to model repos, and the metric to a
    Space with the SDK its card names (``sdk: static``: the folder is served as files, and
    ``evaluate.load("owner/ravel_disentangle")`` downloads the module from it; no app runs).

    Args:
        kind: ``dataset``, ``instance``, ``metric`` or ``featurizer``.
        folder: the folder to upload, as written by ravel-bench.
        repo_id: ``owner/name``; created if missing.
        private: create the repo private (an existing repo keeps its visibility).
        token: Hub token (default: the logged-in one or ``HF_TOKEN``).
        api: the :class:`~huggingface_hub.HfApi` to use (tests pass a stub).
        commit_message: default ``"Upload <kind> with ravel-bench <version>"``.

    Returns:
        The repo's URL.

    Raises:
        ConfigError, DataFormatError: from :func:`check_push_folder`; nothing is uploaded.
        SourceUnavailableError: the Hub refused or could not be reached.
    """
    header = check_push_folder(kind, folder, repo_id)
    spec = PUSH_KINDS[kind]
    api = api or HfApi(token=token)
    create_kwargs: dict[str, Any] = {"repo_type": spec.repo_type, "private": private}
    if spec.repo_type == "space":
        create_kwargs["space_sdk"] = header.get("sdk", "static")
    try:
        url = api.create_repo(repo_id, exist_ok=True, **create_kwargs)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=spec.repo_type,
            commit_message=commit_message or f"Upload {kind} with ravel-bench {__version__}",
            ignore_patterns=_IGNORE,
        )
    except HfHubHTTPError as exc:
        raise SourceUnavailableError(
            f"pushing {folder} to {repo_id} failed: {exc}",
            hint="check your token (`hf auth login` or HF_TOKEN) and that you may write to "
            f"{repo_id.split('/')[0]}",
        ) from exc
    logger.info("%s %s pushed to %s", kind, folder, url)
    return str(url)


def add_push_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``push KIND PATH --repo-id ORG/NAME [--private] [--token T]`` to a CLI."""
    parser = subparsers.add_parser(
        "push", help="upload a dataset, instance, metric or featurizer folder to the Hub"
    )
    parser.add_argument("kind", choices=sorted(PUSH_KINDS), help="what the folder holds")
    parser.add_argument("path", help="the folder to upload")
    parser.add_argument(
        "--repo-id", required=True, help="Hub repo id, ORG/NAME (created if missing)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--token", default=None, help="Hub token (default: `hf auth login` or $HF_TOKEN)"
    )
    parser.set_defaults(func=cmd_push)
    return parser


def cmd_push(args: argparse.Namespace) -> int:
    """Run ``ravel-bench push``; print the repo URL."""
    url = push(args.kind, args.path, args.repo_id, private=args.private, token=args.token)
    sys.stdout.write(f"{args.kind} {args.path} pushed to {url}\n")
    return 0
