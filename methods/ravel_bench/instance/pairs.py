"""Sample base/source pairs for the train, Entity and Context settings (DESIGN.md section 3.5).

- ``train``: train entities x train templates; sources: train entities with the train templates
  of every attribute and the train Wikipedia templates.
- ``entity`` (held-out entities): entities of the val or test split x train templates; sources:
  entities of the same split with train templates.
- ``context`` (held-out templates): train entities x templates of the val or test split;
  sources: train entities with templates of the same split.

For a base (entity ``e``, template ``t``), source entities ``e'`` are drawn among those whose
counterfactual label (the model's output on ``t % e'``) differs from the base label in its first 3
tokens (neither token sequence may start the other: evaluation could not tell them apart), with weights
``1 / (c + count of that label among the candidates)`` to flatten the label distribution; the
source template is then drawn uniformly among the allowed templates (a Wikipedia template that
names an entity is allowed only for that entity, and strings that are also attribute templates
are never used as Wikipedia contexts (:class:`PairPools` holds the kept templates only, so
``build_instance`` passes :meth:`~ravel_bench.data.EntityTypeRelease.other_contexts`, which
leaves every attribute template of the release out), nor are the few that glue the entity to a
word, as in ``%sspor``). Only (entity, template) cells the model answers correctly are used, for
the base and for the counterfactual. Drawing among differing labels is equivalent to dropping
pairs with ``label == inv_label`` and redrawing; a base with no such candidate gets no pair.
Every draw uses a numpy Generator seeded from the config seed, the setting and the split.
"""

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

OTHER = "Other"
# A few Wikipedia prefixes glue the entity to a word ("%sspor"): it is no token of its own there.
_GLUED = re.compile(r"\w%s|%s\w")
SETTINGS: tuple[tuple[str, str], ...] = (
    ("train", "train"),
    ("entity", "val"),
    ("entity", "test"),
    ("context", "val"),
    ("context", "test"),
)


@dataclass(frozen=True)
class Cell:
    """The model's greedy output on one (template, entity) prompt.

    Args:
        label: the first phrase of the output, with its leading space.
        correct: whether the output states the ground truth.
        key: the label's first tokens (3), tokenized in context: what evaluation compares.
    """

    label: str
    correct: bool
    key: tuple[int, ...] = ()


def distinguishable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two label keys can be told apart by evaluation (neither is a prefix of the other).

    Evaluation compares the first ``min(len(expected), len(generated))`` tokens, so a label whose
    tokens start another's cannot separate the two outcomes.
    """
    n = min(len(a), len(b))
    return a[:n] != b[:n]


@dataclass(frozen=True)
class PairPools:
    """Everything pair sampling needs.

    Args:
        entity_split: ``{entity: split}`` of the kept entities.
        templates: ``{template: (attribute, split)}`` of the kept attribute templates.
        wikipedia: ``{template: (split, entity or None)}`` of usable Wikipedia contexts.
        cells: ``{(template, entity): Cell}`` for kept templates x kept entities.
    """

    entity_split: Mapping[str, str]
    templates: Mapping[str, tuple[str, str]]
    wikipedia: Mapping[str, tuple[str, str | None]]
    cells: Mapping[tuple[str, str], Cell]


def _pools(setting: str, split: str) -> tuple[str, str, str, str]:
    """Return (base entity split, base template split, source entity split, source template split)."""
    if setting == "train":
        return "train", "train", "train", "train"
    if setting == "entity":
        return split, "train", split, "train"
    if setting == "context":
        return "train", split, "train", split
    raise ValueError(f"unknown setting {setting!r}; expected train, entity or context")


def sample_pairs(
    pools: PairPools,
    setting: str,
    split: str,
    *,
    c: float,
    seed: int,
    max_pairs: int | None = None,
) -> list[dict[str, str]]:
    """Sample the pairs of one setting and split.

    Args:
        pools: kept entities, templates and the model's outputs.
        setting: ``"train"``, ``"entity"`` or ``"context"``.
        split: ``"train"`` (train setting) or ``"val"`` / ``"test"``.
        c: the smoothing constant of the label-flattening weights.
        seed: base seed; combined with the setting and split.
        max_pairs: keep a seeded random subset of at most this many pairs.

    Returns:
        One dict per pair with the fields ``input, label, source_input, source_label, inv_label,
        base_template, source_template, entity, source_entity, attribute, source_attribute``.
    """
    setting_index = [s for s, _ in SETTINGS].index(setting)
    rng = np.random.default_rng([seed, setting_index, ["train", "val", "test"].index(split)])
    base_es, base_ts, src_es, src_ts = _pools(setting, split)
    base_entities = sorted(e for e, s in pools.entity_split.items() if s == base_es)
    source_entities = sorted(e for e, s in pools.entity_split.items() if s == src_es)
    base_templates = sorted(t for t, (_, s) in pools.templates.items() if s == base_ts)
    source_attr_templates = sorted(t for t, (_, s) in pools.templates.items() if s == src_ts)
    wiki = sorted(
        t
        for t, (s, _) in pools.wikipedia.items()
        if s == src_ts and t not in pools.templates and not _GLUED.search(t)
    )
    wiki_any = [t for t in wiki if pools.wikipedia[t][1] is None]
    wiki_named: dict[str, list[str]] = {}
    for t in wiki:
        named = pools.wikipedia[t][1]
        if named is not None:
            wiki_named.setdefault(named, []).append(t)

    pairs = []
    for template in base_templates:
        attribute = pools.templates[template][0]
        # Candidate sources for this template: entities the model answers correctly on it.
        known = [e for e in source_entities if pools.cells[(template, e)].correct]
        known_labels = [pools.cells[(template, e)].label for e in known]
        known_keys = [pools.cells[(template, e)].key for e in known]
        counts = Counter(known_labels)
        weights = np.array([1.0 / (c + counts[label]) for label in known_labels])
        distinct_keys = list(dict.fromkeys(known_keys))
        key_index = np.array([distinct_keys.index(k) for k in known_keys], dtype=np.int64)
        for entity in base_entities:
            base = pools.cells[(template, entity)]
            if not base.correct:
                continue
            # The base entity has the base key, so this mask also excludes it.
            key_ok = np.array([distinguishable(base.key, k) for k in distinct_keys])
            usable = key_ok[key_index] if len(known) else np.zeros(0, dtype=bool)  # [n_known]
            if not usable.any():
                continue
            p = np.where(usable, weights, 0.0)
            source_entity = known[rng.choice(len(known), p=p / p.sum())]
            allowed = source_attr_templates + wiki_any + wiki_named.get(source_entity, [])
            source_template = allowed[rng.integers(len(allowed))]
            is_attr = source_template in pools.templates
            pairs.append(
                {
                    "input": template % entity,
                    "label": base.label,
                    "source_input": source_template % source_entity,
                    "source_label": (
                        pools.cells[(source_template, source_entity)].label if is_attr else ""
                    ),
                    "inv_label": pools.cells[(template, source_entity)].label,
                    "base_template": template,
                    "source_template": source_template,
                    "entity": entity,
                    "source_entity": source_entity,
                    "attribute": attribute,
                    "source_attribute": pools.templates[source_template][0] if is_attr else OTHER,
                }
            )
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = sorted(rng.choice(len(pairs), size=max_pairs, replace=False).tolist())
        pairs = [pairs[i] for i in keep]
    return pairs
