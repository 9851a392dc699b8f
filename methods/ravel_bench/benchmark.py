"""Train and evaluate every method for every attribute of an instance; write a leaderboard.

Layout of the output folder (resumable: a finished (method, attribute) is never redone)::

    OUT/featurizers/{method}-{attribute}/   saved featurizer (config.json + model.safetensors)
    OUT/evals/{method}-{attribute}.json     its scores on the Entity and Context test splits
    OUT/results.json                        {method: {"entity": {...}, "context": {...}}, ...}
    OUT/leaderboard.md                      Cause / Isolate / Disentangle per method and setting
    OUT/cause_vs_isolate.png                the paper's scatter plot

Scores of a method average its per-attribute scores (each attribute scored with the featurizer
trained for it) over the instance's attributes. Baselines (``full``, ``noop``, ``random``) use one
featurizer for every attribute.
"""

import json
import logging
import math
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from ravel_bench.activations import collect_attribute_activations
from ravel_bench.data import EntityTypeRelease
from ravel_bench.engine.blocks import hidden_size, site_name
from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.evaluation import evaluate_featurizer
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.featurizers.pca import train_pca
from ravel_bench.featurizers.registry import parse_featurizer_spec
from ravel_bench.featurizers.rlap import train_rlap
from ravel_bench.featurizers.sae import train_sae
from ravel_bench.featurizers.selection import SELECTION_C
from ravel_bench.files import write_text_atomic
from ravel_bench.hub import load_featurizer, save_featurizer
from ravel_bench.instance.build import RavelInstance
from ravel_bench.models import LoadedModel
from ravel_bench.training import INTERVENTION_METHODS, TrainConfig, train_intervention

logger = logging.getLogger(__name__)

LEARNED_METHODS = ("pca", "sae", "rlap", "dbm", "mdbm", "das", "mdas")
BASELINE_METHODS = ("full", "noop", "random")
ALL_METHODS = LEARNED_METHODS + BASELINE_METHODS
SETTINGS = ("entity", "context")
METRICS = ("cause", "isolate", "disentangle")
# choose_layer: the entity still carries its attributes where a full swap keeps this Cause.
CARRIES_ATTRIBUTES_CAUSE = 0.8


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run.

    Args:
        methods: method names (see :data:`ALL_METHODS`).
        layer: intervention layer (``-1`` embeddings, else block index).
        k: subspace size of DAS, MDAS, RLAP and the random baseline.
        split: evaluation split of both settings: ``test`` (what a leaderboard reports) or
            ``val`` (for choosing hyperparameters).
        train: hyperparameters of the intervention methods (``method`` is overridden).
        seed: seed of every method.
        batch_size: prompts per forward pass at evaluation.
        max_features: a feature budget for the methods that choose how many features they
            swap: PCA and SAE keep at most this many (the largest L1 coefficients), DBM and MDBM
            at most this many neurons (the largest mask logits). ``None`` (the default): no
            budget, as in RAVEL. DAS, MDAS, RLAP and the random baseline always use ``k``.
        selection_c: inverse L1 strength of the classifier that selects PCA's and SAE's
            features (smaller keeps fewer). The masks' sparsity is ``train.l1_coefficient``.
    """

    methods: tuple[str, ...] = ALL_METHODS
    layer: int = 0
    k: int = 8
    split: str = "test"
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    batch_size: int = 64
    max_features: int | None = None
    selection_c: float = SELECTION_C

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose among {', '.join(ALL_METHODS)}")
        if self.max_features is not None and self.max_features < 1:
            raise ConfigError(f"max_features={self.max_features} must be >= 1 (or None: no budget)")
        if self.split not in ("test", "val"):
            raise ConfigError(
                f"BenchmarkConfig.split={self.split!r}; expected 'test' or 'val' (the train "
                "pairs train the methods)"
            )
        for name in ("k", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BenchmarkConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.selection_c > 0 and math.isfinite(self.selection_c)):
            raise ConfigError(
                f"BenchmarkConfig.selection_c={self.selection_c} must be a positive number"
            )


def choose_layer(full_swap_cause: dict[str, list[float]]) -> tuple[int, str]:
    """Choose the block to benchmark from a full-swap sweep, and say why.

    The choice is the first block output (never the raw embeddings, which no block has
    processed yet) whose full-swap Cause is at least :data:`CARRIES_ATTRIBUTES_CAUSE` in every
    setting: the entity's vector still carries all its attributes there, so a method can find
    each one. If no block qualifies, the block with the highest lowest-setting Cause.

    Args:
        full_swap_cause: per setting, the full swap's Cause after block 0, 1, ... (``[n_blocks]``).

    Returns:
        The block index and a sentence stating the rule and the numbers.
    """
    if not full_swap_cause or len({len(v) for v in full_swap_cause.values()}) != 1:
        raise ConfigError(
            "choose_layer needs one Cause per block for every setting; "
            f"got { ({k: len(v) for k, v in full_swap_cause.items()}) }"
        )
    worst = [min(c) for c in zip(*full_swap_cause.values(), strict=True)]  # per block
    for block, cause in enumerate(worst):
        if cause >= CARRIES_ATTRIBUTES_CAUSE:
            return block, (
                f"block {block}: the first block whose full-swap Cause is >= "
                f"{CARRIES_ATTRIBUTES_CAUSE} in every setting ({cause:.3f})"
            )
    block = max(range(len(worst)), key=worst.__getitem__)
    return block, (
        f"block {block}: no block keeps a full-swap Cause >= {CARRIES_ATTRIBUTES_CAUSE} in every "
        f"setting; this one has the highest ({worst[block]:.3f})"
    )


def train_featurizer(
    method: str,
    loaded: LoadedModel,
    instance: RavelInstance,
    release: EntityTypeRelease,
    attribute: str,
    config: BenchmarkConfig,
    show_progress: bool = True,
    shared: dict | None = None,
) -> Featurizer:
    """Train one featurizer of ``method`` for ``attribute`` at ``config.layer``.

    Every trainer fills the featurizer's config (base model, site, entity type, attribute).

    Args:
        shared: a dict kept across calls of one run: the train activations and the fitted PCA
            and SAE, which do not depend on the attribute, are computed once and reused.
    """
    model, tokenizer, layer = loaded.model, loaded.tokenizer, config.layer
    if method in INTERVENTION_METHODS:
        train_config = _train_config(method, config)
        featurizer, _ = train_intervention(
            model,
            tokenizer,
            instance,
            attribute,
            layer,
            train_config,
            show_progress=show_progress,
            model_id=loaded.model_id,
            model_revision=loaded.revision,
        )
        return featurizer
    if method not in ("pca", "sae", "rlap"):
        raise ConfigError(f"{method!r} is not a trainable method")
    shared = {} if shared is None else shared
    if "activations" not in shared:
        shared["activations"] = collect_attribute_activations(
            model,
            tokenizer,
            instance,
            release,
            layer,
            attributes=instance.attributes,
            batch_size=config.batch_size,
            show_progress=show_progress,
        )
    common = {
        "seed": config.seed,
        "show_progress": show_progress,
        "activations": shared["activations"],
    }
    args = (model, tokenizer, instance, release, attribute, layer)
    if method == "pca":
        featurizer = train_pca(
            *args, k=config.max_features, C=config.selection_c, pca=shared.get("pca"), **common
        )
    elif method == "sae":
        featurizer = train_sae(
            *args, k=config.max_features, C=config.selection_c, sae=shared.get("sae"), **common
        )
    else:
        featurizer = train_rlap(*args, k=config.k, **common)
    shared.setdefault(method, featurizer)  # PCA/SAE: reused (masks are replaced, not shared)
    return featurizer


def _train_config(method: str, config: BenchmarkConfig) -> TrainConfig:
    """The intervention trainer's config for ``method`` under the benchmark's settings."""
    return replace(
        config.train,
        method=method,
        k=config.k,
        seed=config.seed,
        max_features=config.max_features if method in ("dbm", "mdbm") else None,
    )


def _recipe(method: str, config: BenchmarkConfig) -> dict:
    """The training recipe recorded in a featurizer's card."""
    recipe: dict = {"method": method, "seed": config.seed, "layer": config.layer}
    if method in INTERVENTION_METHODS:
        train = _train_config(method, config)
        recipe.update({k: v for k, v in vars(train).items() if k != "log_every"})
    elif method == "rlap":
        recipe["k"] = config.k
    elif method in ("pca", "sae"):
        recipe["selection_c"] = config.selection_c
        if config.max_features is not None:
            recipe["max_features"] = config.max_features
    return recipe


def _baseline(method: str, d_model: int, config: BenchmarkConfig) -> Featurizer:
    spec = f"random:{config.k}" if method == "random" else method
    return parse_featurizer_spec(spec, d_model, seed=config.seed)


RUN_FILE = "run.json"


def run_record(loaded: LoadedModel, instance: RavelInstance, config: BenchmarkConfig) -> dict:
    """What a run's results depend on, as stored in its folder's ``run.json``.

    Everything that changes a result takes part (model, instance, layer, k, split, seeds,
    hyperparameters); the method list does not, so a run can be extended with more methods.
    """
    settings = asdict(config)
    del settings["methods"]
    run = {
        "model_id": loaded.model_id,
        "instance": {k: instance.metadata.get(k) for k in ("model_id", "config", "pair_counts")},
        "benchmark": settings,
    }
    return json.loads(json.dumps(run))  # tuples -> lists, as read back


# Benchmark settings added after run.json files were first written, with the value every run
# before them used: an older folder still resumes.
ADDED_SETTINGS = {"selection_c": SELECTION_C}


def held_run_record(out: str | Path) -> dict | None:
    """The ``run.json`` of a benchmark folder, or None if it has none (or an unreadable one).

    Settings an older ravel-bench did not record (:data:`ADDED_SETTINGS`) read as the value it
    used.
    """
    try:
        held = json.loads((Path(out) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(held, dict) and isinstance(held.get("benchmark"), dict):
        held["benchmark"] = {**ADDED_SETTINGS, **held["benchmark"]}
    return held


def _claim_run_folder(
    out: Path, loaded: LoadedModel, instance: RavelInstance, config: BenchmarkConfig
) -> None:
    """Record what ``out`` holds results of, or check that a resumed folder holds this run.

    Raises:
        ConfigError: ``out`` holds results of a run with other settings (see :func:`run_record`).
    """
    run = run_record(loaded, instance, config)
    path = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder", hint="pass a folder")
    if path.is_file():
        held = held_run_record(out)
        if held is None:
            raise ConfigError(
                f"{path} is unreadable (cut short or edited), so the results in {out} cannot be "
                "matched to a run",
                hint="pass another output folder, or delete this one",
            )
        if held != run:
            differ = sorted(k for k in run.keys() | held.keys() if held.get(k) != run.get(k))
            raise ConfigError(
                f"{out} holds benchmark results of a run with other settings "
                f"({', '.join(differ)} differ); resuming would mix the two",
                hint="pass another output folder, or delete this one",
            )
        return
    # A new run's folder may hold only the instance the CLI cached there (``instance/``).
    foreign = sorted(p.name for p in out.iterdir() if p.name != "instance") if out.is_dir() else []
    if foreign:
        raise ConfigError(
            f"{out} is not empty ({', '.join(foreign[:5])}) and holds no {RUN_FILE}: it is not a "
            "benchmark folder to resume, and its files could be overwritten",
            hint="pass a new or empty output folder",
        )
    write_text_atomic(path, json.dumps(run, indent=1) + "\n")


def run_benchmark(
    loaded: LoadedModel,
    instance: RavelInstance,
    release: EntityTypeRelease,
    config: BenchmarkConfig,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    on_done: Callable[[str, str], None] | None = None,
) -> dict:
    """Train and evaluate every (method, attribute); return ``results.json``'s content.

    Args:
        loaded: the instance's model.
        instance: its instance (train pairs for training, test pairs for evaluation).
        release: the release files of the instance's entity type (labels for PCA/SAE/RLAP).
        config: methods, layer, k, split, hyperparameters.
        out_dir: output folder; existing per-(method, attribute) results are reused.
        on_done: called with ``(method, attribute)`` after each finished unit.
    """
    out = Path(out_dir)
    d_model = hidden_size(loaded.model)
    if config.k > d_model:
        raise ConfigError(f"k={config.k} is larger than the model's d_model={d_model}")
    entity_type = instance.metadata.get("entity_type")
    if release.entity_type != entity_type:
        raise ConfigError(
            f"the release part is {release.entity_type!r} but the instance is of {entity_type!r}",
            hint=f"pass --entity-type {entity_type}",
        )
    _claim_run_folder(out, loaded, instance, config)
    (out / "featurizers").mkdir(parents=True, exist_ok=True)
    (out / "evals").mkdir(parents=True, exist_ok=True)
    shared: dict = {}  # attribute-independent work (activations, PCA, SAE), done once
    units = [(m, a) for m in config.methods for a in instance.attributes]
    for method, attribute in tqdm(units, desc="benchmark", disable=not show_progress):
        eval_path = out / "evals" / f"{method}-{attribute}.json"
        if _readable_json(eval_path):
            logger.info("%s/%s already evaluated: reusing %s", method, attribute, eval_path)
            continue
        folder = out / "featurizers" / f"{method}-{attribute}"
        featurizer = None
        if method in BASELINE_METHODS:
            featurizer = _baseline(method, d_model, config)
        elif (folder / "model.safetensors").is_file():
            try:
                featurizer = load_featurizer(folder)
            except DataFormatError as exc:  # e.g. a save cut short by an interruption
                logger.warning("retraining %s for %s: %s", method, attribute, exc)
        if featurizer is None:
            try:
                featurizer = train_featurizer(
                    method, loaded, instance, release, attribute, config, show_progress, shared
                )
            except ConfigError as exc:  # e.g. no train pair queries this attribute
                logger.warning("skipping %s for %s: %s", method, attribute, exc)
                skipped = {setting: None for setting in SETTINGS} | {"skipped": str(exc)}
                write_text_atomic(eval_path, json.dumps(skipped, indent=1) + "\n")
                continue
            save_featurizer(featurizer, folder)  # saved before evaluation: resumable
        record = {}
        for setting in SETTINGS:
            result = evaluate_featurizer(
                loaded.model,
                loaded.tokenizer,
                instance,
                {attribute: featurizer},
                config.layer,
                setting,
                config.split,
                batch_size=config.batch_size,
                show_progress=show_progress,
                config={"featurizer": method},
            )
            record[setting] = result.scores["per_attribute"].get(attribute)
        if method not in BASELINE_METHODS:
            scores = {
                setting: {config.split: {m: record[setting][m] for m in METRICS}}
                for setting in SETTINGS
                if record[setting]
            }
            save_featurizer(featurizer, folder, scores=scores, training=_recipe(method, config))
        write_text_atomic(eval_path, json.dumps(record, indent=1) + "\n")
        if on_done is not None:
            on_done(method, attribute)
    earlier = finished_methods(out, instance.attributes, exclude=config.methods)
    if earlier:
        logger.info(
            "the leaderboard also lists %s, finished in %s earlier", ", ".join(earlier), out
        )
    results = aggregate(out, config.methods + earlier, instance.attributes)
    meta = {
        "model_id": loaded.model_id,
        "entity_type": instance.metadata.get("entity_type"),
        "layer": config.layer,
        "site": site_name(config.layer),
        "k": config.k,
        "split": config.split,
        "seed": config.seed,
    }
    write_text_atomic(out / "results.json", json.dumps({**results, "_meta": meta}, indent=1) + "\n")
    write_text_atomic(out / "leaderboard.md", leaderboard_markdown(results, meta))
    plot_cause_vs_isolate(results, out / "cause_vs_isolate.png")
    return results


def _readable_json(path: Path) -> bool:
    """Whether ``path`` holds a whole JSON object (a file cut short by an interruption does not)."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return math.fsum(kept) / len(kept) if kept else None


def finished_methods(
    out: Path, attributes: list[str], *, exclude: Container[str] = ()
) -> tuple[str, ...]:
    """Methods (in :data:`ALL_METHODS` order) evaluated for every attribute in ``out``: a rerun
    with fewer ``--methods`` keeps the others on its leaderboard."""
    return tuple(
        m
        for m in ALL_METHODS
        if m not in exclude
        and all(_readable_json(out / "evals" / f"{m}-{a}.json") for a in attributes)
    )


def aggregate(out: Path, methods: tuple[str, ...], attributes: list[str]) -> dict:
    """Average per-attribute scores into ``{method: {setting: {metric}}}`` plus the detail."""
    results: dict = {}
    for method in methods:
        per_attribute = {}
        for attribute in attributes:
            path = out / "evals" / f"{method}-{attribute}.json"
            if path.is_file():
                per_attribute[attribute] = json.loads(path.read_text())
        entry: dict = {"per_attribute": per_attribute}
        for setting in SETTINGS:
            scored = [r[setting] for r in per_attribute.values() if r.get(setting)]
            entry[setting] = {m: _mean([s[m] for s in scored]) for m in METRICS}
        results[method] = entry
    return results


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def leaderboard_markdown(results: dict, meta: dict) -> str:
    """A markdown table: Cause / Isolate / Disentangle per method, Entity and Context."""
    lines = [
        f"# RAVEL leaderboard: {meta['entity_type']} on `{meta['model_id']}`",
        "",
        f"Layer {meta['site']}, k = {meta['k']}, {meta['split']} split, seed {meta['seed']}. "
        "Scores average the per-attribute scores over target attributes.",
        "",
        "| method | Entity cause | Entity isolate | Entity disentangle | Context cause | "
        "Context isolate | Context disentangle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def key(item: tuple[str, dict]) -> float:
        d = item[1]["entity"]["disentangle"]
        return -(d if d is not None else -1.0)

    for method, entry in sorted(results.items(), key=key):
        e, c = entry["entity"], entry["context"]
        lines.append(
            f"| {method} | {_fmt(e['cause'])} | {_fmt(e['isolate'])} | {_fmt(e['disentangle'])} "
            f"| {_fmt(c['cause'])} | {_fmt(c['isolate'])} | {_fmt(c['disentangle'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_cause_vs_isolate(results: dict, path: Path) -> None:
    """Scatter Cause (x) against Isolate (y) per method, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, setting in zip(axes, SETTINGS, strict=True):
        for method, entry in results.items():
            s = entry[setting]
            if s["cause"] is None or s["isolate"] is None:
                continue
            ax.scatter(s["cause"], s["isolate"], s=40)
            ax.annotate(
                method,
                (s["cause"], s["isolate"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=9,
            )
        ax.plot([0, 1], [1, 0], linestyle=":", color="grey", linewidth=1)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("Cause")
        ax.set_title(f"{setting.capitalize()} test")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Isolate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "ALL_METHODS",
    "BenchmarkConfig",
    "run_benchmark",
    "train_featurizer",
]
