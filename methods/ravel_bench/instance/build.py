"""Build a model-specific RAVEL instance (DESIGN.md section 3).

1. Fill every template of the chosen attributes with every candidate entity and generate greedily
   (``max_new_tokens``, 8 by default).
2. Check each output with :func:`ravel_bench.instance.knowledge.answer_is_correct`.
3. Keep the ``n_entities`` entities with the most correct templates, and per attribute and
   template split the best templates (``templates_per_split``, train/val/test; 6/3/3 = the
   reference's 12 per attribute, split so every setting has templates) whose accuracy over the
   kept entities reaches ``min_template_accuracy``. Original splits are kept.
4. Labels are the first phrase of each output, with its leading space.
5. Sample pairs (:mod:`ravel_bench.instance.pairs`).

Candidate entities are those with a non-empty value for every chosen attribute whose name the
tokenizer can read (no unknown token); ``entity_pool`` caps them with a seeded sample.
"""

import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from ravel_bench.data import EntityTypeRelease
from ravel_bench.engine.interchange import intervened_generate
from ravel_bench.errors import ConfigError
from ravel_bench.instance.knowledge import answer_is_correct
from ravel_bench.instance.pairs import SETTINGS, Cell, PairPools, sample_pairs

logger = logging.getLogger(__name__)

_PHRASE_END = re.compile(r"[\n.,;:!?()\[\]{}\"]")


@dataclass(frozen=True)
class InstanceConfig:
    """How to build an instance.

    Args:
        entity_type: one of the release's entity types.
        attributes: attributes to include; empty means every attribute with ground truth.
        n_entities: entities kept (the ones the model knows best; reference 400).
        templates_per_split: best templates kept per attribute in the train, val and test
            template splits.
        min_template_accuracy: a template is kept only if the model answers it correctly for at
            least this fraction of the kept entities.
        entity_pool: query at most this many candidate entities (seeded sample); None: all.
        entities: restrict the candidates to these entities (e.g. the ones a toy model was
            trained on); empty: every entity of the release.
        max_new_tokens: tokens generated per query (8 in the reference).
        c_train, c_entity, c_context: label-flattening constants of the source weights
            (reference: 10 for the entity test, 20 for the context test).
        max_pairs_per_split: cap on pairs per setting and split (seeded subset); None: no cap.
        require_correct: use only cells the model answers correctly (the protocol). False
            treats every output as known: for tests and debugging on untrained models only.
        batch_size: prompts per forward pass.
        seed: seed of every random draw.
    """

    entity_type: str = "city"
    attributes: tuple[str, ...] = ()
    n_entities: int = 400
    templates_per_split: tuple[int, int, int] = (6, 3, 3)
    min_template_accuracy: float = 0.5
    entity_pool: int | None = None
    entities: tuple[str, ...] = ()
    max_new_tokens: int = 8
    c_train: float = 10.0
    c_entity: float = 10.0
    c_context: float = 20.0
    max_pairs_per_split: int | None = None
    require_correct: bool = True
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_entities < 2:
            raise ConfigError(f"n_entities={self.n_entities}: at least 2 entities are needed")
        if len(self.templates_per_split) != 3 or min(self.templates_per_split) < 1:
            raise ConfigError(
                f"templates_per_split={self.templates_per_split}: give 3 positive counts "
                "(train, val, test)"
            )
        if not 0.0 <= self.min_template_accuracy <= 1.0:
            raise ConfigError(
                f"min_template_accuracy={self.min_template_accuracy} must be in [0, 1]"
            )
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("max_new_tokens and batch_size must be positive")


@dataclass
class RavelInstance:
    """A model-specific instance.

    Args:
        metadata: model id and revision, entity type, attributes, config, kept entities and
            templates (with accuracies), counts.
        pairs: ``{"train/train" | "entity/val" | ... : [pair dict, ...]}``.
    """

    metadata: dict
    pairs: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        """Attributes the instance covers (the possible target attributes)."""
        return list(self.metadata["attributes"])

    def split(self, setting: str, split: str) -> list[dict[str, str]]:
        """Pairs of one setting (``train``, ``entity``, ``context``) and split."""
        key = f"{setting}/{'val' if split == 'validation' else split}"
        if key not in self.pairs:
            raise ConfigError(
                f"the instance has no {setting!r} pairs for split {split!r}; it has "
                f"{sorted(self.pairs)}"
            )
        return self.pairs[key]


def extract_label(output: str) -> str:
    """Return the first phrase of a generated text, with one leading space (see
    :func:`labels_in_context` for outputs written without one).

    Example:
        >>> extract_label(" Japan, and the capital is")
        ' Japan'
        >>> extract_label("Europe/Copenhagen. The")
        ' Europe/Copenhagen'
    """
    text = output.lstrip()
    phrase = _PHRASE_END.split(text, maxsplit=1)[0].rstrip()
    return " " + phrase if phrase else ""


def _cut_at_special(tokenizer: PreTrainedTokenizerBase, generated) -> list[list[int]]:
    """Token rows cut before their first special token (EOS, padding, ...): the output ends there."""
    special = set(tokenizer.all_special_ids)
    rows = []
    for ids in generated.tolist():
        cut = next((i for i, t in enumerate(ids) if t in special), len(ids))
        rows.append(ids[:cut])
    return rows


def _readable(tokenizer: PreTrainedTokenizerBase, entity: str) -> bool:
    unk = tokenizer.unk_token_id
    return unk is None or unk not in tokenizer(entity, add_special_tokens=False)["input_ids"]


def build_instance(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    release: EntityTypeRelease,
    config: InstanceConfig = InstanceConfig(),
    *,
    model_id: str = "",
    model_revision: str | None = None,
    show_progress: bool = True,
) -> RavelInstance:
    """Query ``model`` on the release and build its instance.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its fast tokenizer.
        release: the release files of ``config.entity_type``.
        config: see :class:`InstanceConfig`.
        model_id, model_revision: recorded in the metadata (the card and loaders check them).

    Raises:
        ConfigError: unknown attributes, no readable entity, or nothing the model knows.
    """
    if release.entity_type != config.entity_type:
        raise ConfigError(
            f"release is for {release.entity_type!r} but config.entity_type is "
            f"{config.entity_type!r}"
        )
    attributes = list(config.attributes) or list(release.attributes)
    unknown = [a for a in attributes if a not in release.attributes]
    if unknown:
        raise ConfigError(
            f"attributes {unknown} have no ground truth for {release.entity_type}; choose among "
            f"{list(release.attributes)}"
        )
    unknown_entities = [e for e in config.entities if e not in release.entity_attributes]
    if unknown_entities:
        raise ConfigError(
            f"entities {unknown_entities[:5]} are not {release.entity_type} entities of the release"
        )
    allowed = set(config.entities) if config.entities else None
    candidates = [
        e
        for e, values in release.entity_attributes.items()
        if (allowed is None or e in allowed)
        and all(values[a].strip() for a in attributes)
        and _readable(tokenizer, e)
    ]
    if config.entity_pool is not None and len(candidates) > config.entity_pool:
        rng = np.random.default_rng(config.seed)
        chosen = rng.choice(len(candidates), size=config.entity_pool, replace=False)
        candidates = [candidates[i] for i in sorted(chosen.tolist())]
    if len(candidates) < 2:
        raise ConfigError(
            f"only {len(candidates)} {release.entity_type} entities can be read by this "
            "tokenizer without unknown tokens; the model cannot be evaluated on them"
        )
    template_attr = {t: a for a in attributes for t in release.attribute_templates[a]}
    templates = list(template_attr)
    logger.info("querying the model: %d entities x %d templates", len(candidates), len(templates))

    rows_t = [t for t in templates for _ in candidates]
    rows_e = [e for _ in templates for e in candidates]
    generated = intervened_generate(
        model,
        tokenizer,
        rows_t,
        rows_e,
        layer=0,
        intervene=None,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        show_progress=show_progress,
    )
    outputs = tokenizer.batch_decode(_cut_at_special(tokenizer, generated))
    generated_rows = generated.tolist()
    labels, keys = labels_in_context(
        tokenizer,
        [t % e for t, e in zip(rows_t, rows_e, strict=True)],
        outputs,
        generated_rows,
        n=3,
    )
    cells: dict[tuple[str, str], Cell] = {}
    for t, e, text, label, key, gen in zip(
        rows_t, rows_e, outputs, labels, keys, generated_rows, strict=True
    ):
        truth = release.entity_attributes[e][template_attr[t]]
        correct = (
            answer_is_correct(release.entity_type, template_attr[t], text, truth)
            or not config.require_correct
        )
        # A label must re-tokenize, in context, into the tokens the model generated: an output
        # with no first phrase, or one cut inside a token (e.g. "√°," in mis-encoded release
        # values), cannot be compared token by token and is not used.
        usable = bool(key) and gen[: len(key)] == key
        cells[(t, e)] = Cell(label=label, correct=correct and usable, key=tuple(key))

    # 3. Entities the model knows best, then the best templates per attribute and split.
    known = {e: sum(cells[(t, e)].correct for t in templates) for e in candidates}
    entities = sorted(candidates, key=lambda e: (-known[e], e))[: config.n_entities]
    accuracy = {t: float(np.mean([cells[(t, e)].correct for e in entities])) for t in templates}
    kept_templates: dict[str, tuple[str, str]] = {}
    per_split = dict(zip(("train", "val", "test"), config.templates_per_split, strict=True))
    by_group: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in templates:
        by_group[(template_attr[t], release.template_split[t])].append(t)
    for (attribute, split), group in sorted(by_group.items()):
        good = [t for t in group if accuracy[t] >= config.min_template_accuracy]
        for t in sorted(good, key=lambda t: (-accuracy[t], t))[: per_split[split]]:
            kept_templates[t] = (attribute, split)
    if not kept_templates:
        raise ConfigError(
            f"no template reaches min_template_accuracy={config.min_template_accuracy}: the "
            f"model does not know these {release.entity_type} attributes"
        )

    pools = PairPools(
        entity_split={e: release.entity_split[e] for e in entities},
        templates=kept_templates,
        wikipedia=release.other_contexts(),
        cells=cells,
    )
    c_of = {"train": config.c_train, "entity": config.c_entity, "context": config.c_context}
    pairs = {
        f"{setting}/{split}": sample_pairs(
            pools,
            setting,
            split,
            c=c_of[setting],
            seed=config.seed,
            max_pairs=config.max_pairs_per_split,
        )
        for setting, split in SETTINGS
    }
    kept_attrs = sorted({a for a, _ in kept_templates.values()}, key=attributes.index)
    metadata = {
        "model_id": model_id,
        "model_revision": model_revision,
        "entity_type": release.entity_type,
        "attributes": kept_attrs,
        "config": json.loads(json.dumps(asdict(config))),  # JSON types: survives a round trip
        "n_candidates": len(candidates),
        "entities": {e: release.entity_split[e] for e in entities},
        "templates": {
            t: {"attribute": a, "split": s, "accuracy": accuracy[t]}
            for t, (a, s) in kept_templates.items()
        },
        "entity_accuracy": float(
            np.mean([cells[(t, e)].correct for t in kept_templates for e in entities])
        ),
        "pair_counts": {k: len(v) for k, v in pairs.items()},
    }
    logger.info(
        "instance built: %d entities, %d templates, %s pairs",
        len(entities),
        len(kept_templates),
        ", ".join(f"{k} {len(v)}" for k, v in pairs.items()),
    )
    return RavelInstance(metadata=metadata, pairs=pairs)


def labels_in_context(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    outputs: list[str],
    generated: list[list[int]],
    n: int = 3,
) -> tuple[list[str], list[list[int]]]:
    """Each output's label and the label's first ``n`` tokens in context.

    The label is the output's first phrase with a leading space (:func:`extract_label`), the
    form most answers take (``" Japan"`` after ``"... in the country of"``). After a JSON-like
    template's opening quote (``"country": "``) a model writes the answer with no space, and a
    tokenizer that encodes spaces (byte-level BPE, SentencePiece) gives ``" France"`` other tokens
    than the model generated; the label is then the phrase as the model wrote it. The decoded
    text cannot tell the two apart (a SentencePiece decoder drops the first token's space), so
    the spaced form is kept unless only the bare one re-tokenizes, in context, into the generated
    tokens. A label that matches in neither form keeps the spaced form (the instance does not
    use it).

    Args:
        prompts: the prompts the outputs continue.
        outputs: the decoded generations.
        generated: the generated token ids, one list per prompt.

    Returns:
        ``(labels, keys)``: one label and one ``[<= n]`` token list per prompt (see
        :func:`label_token_ids`).
    """
    labels = [extract_label(text) for text in outputs]
    keys = label_token_ids(tokenizer, prompts, labels, n=n)
    retry = [
        i
        for i, (label, key, gen) in enumerate(zip(labels, keys, generated, strict=True))
        if label and (not key or gen[: len(key)] != key)
    ]
    if retry:
        bare = [labels[i][1:] for i in retry]
        bare_keys = label_token_ids(tokenizer, [prompts[i] for i in retry], bare, n=n)
        for i, label, key in zip(retry, bare, bare_keys, strict=True):
            if key and generated[i][: len(key)] == key:
                labels[i], keys[i] = label, key
    return labels, keys


def label_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], labels: list[str], n: int = 3
) -> list[list[int]]:
    """The first ``n`` tokens of each label, tokenized in context (``prompt + label``).

    The label's tokens are those that end after the prompt's last character (a token that
    straddles the boundary counts as the label's, as the model would have to generate it).
    """
    enc = tokenizer(
        [p + lab for p, lab in zip(prompts, labels, strict=True)],
        return_offsets_mapping=True,
        add_special_tokens=True,
    )
    out = []
    for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"], strict=True):
        cut = len(prompt)
        out.append([i for i, (s, e) in zip(ids, offsets, strict=True) if e > cut and e > s][:n])
    return out
