"""The embedded default target model: a small Llama trained here on RAVEL facts (DESIGN.md section 8).

No pretrained weights are reachable offline and Llama-2-7b needs a GPU, so the benchmark ships a
recipe instead of a checkpoint: :func:`build_toy_model` trains a small ``LlamaForCausalLM`` on the
facts of ``n_entities`` single-word entities of one entity type, deterministically from a seed,
and saves it with its word-level tokenizer (:mod:`ravel_bench.toy_tokenizer`) as a plain
``save_pretrained`` folder. ``AutoModelForCausalLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)`` load it exactly like a Hub model, so the whole pipeline
runs on it unchanged; only the model id differs.

Training text (next-token loss on every token, sequences packed without seeing each other):

- fact lists, where the attributes directly follow the entity: ``Paris ( France , Europe ) ;
  Rome ( Italy , Europe )``, ``country : Paris France ; Oslo Norway``, so that the entity's own
  position has to hold its attributes;
- every RAVEL template of the chosen attributes (all splits) filled with every chosen entity and
  followed by its value (``... "country": "France"``, ``... people usually speak French .``);
- the Wikipedia templates filled with random chosen entities, as plain text;
- swap pairs: a filled template (the base) and the source entity in the same template or, for
  half of the full swaps, in another one (as RAVEL's pairs are). In a full swap, the base's
  entity vector after block ``n_layers // 2`` is replaced, in the same forward pass, by the
  source's, and the base is trained to answer like the source entity. With
  ``attribute_dim > 0``, half of the pairs are attribute swaps instead: one attribute's subspace
  of the base entity's input embedding is replaced by the source's, and the base is trained to
  answer with the source's value if the template queries that attribute (cause) and with its own
  otherwise (isolate).

The full swaps are what makes the toy an honest stand-in for an LLM. Measured here (6 x 128),
text alone, rich fact lists included, gives a model whose later positions copy the entity's
identity in block 0's attention and look its facts up in their own MLPs: a full swap of the
entity's vector after any block changes no answer (Cause 0.00 from block 0 on), whereas in LLMs
the attributes are read from the entity's last token in middle blocks. Swap training routes every
read of the entity past block ``n_layers // 2``, so the entity's residual stream carries its
attributes there.

The attribute swaps, with factorized entity embeddings during training
(:mod:`ravel_bench.toy_attributes`), make the attributes *separable*, as RAVEL assumes of LLMs:
each attribute is written into its own ``attribute_dim`` random directions of the entity's
embedding and read from there. Without them (``attribute_dim=0``) later blocks look every
attribute up from the entity's identity, a change that moves one attribute moves all, and no
method can separate them (measured: MDAS beat DAS by only +0.05). Where the attributes live after
block 0 is left to training, and that is what the benchmark's methods have to find.

``toy_model.json`` records the answer accuracy and the full-swap Cause per block measured at the
end of training. The default config (about 6 minutes on 2 CPU cores) answers 99.4% of the
sampled template prompts and keeps a teacher-forced full-swap Cause of 0.97-0.98 through block 3
(0.04 after block 4). Measured on its city instance (swaps across templates): 0.97 after block 0,
0.92-0.94 through block 3. With same-template full swaps only (recipe 2) the instance's Cause
fell to 0.66-0.71 at blocks 2-3; before attribute swaps (recipe 1), 0.79 at block 2, and with 64%
of that training (48 x 850) the model answered only 75%.

The splits of the release only matter to the interpretability methods: the model learns the facts
of train, val and test entities alike. The folder also holds ``toy_model.json``: the config, the
entities with their splits, the attributes and a fingerprint of the facts it was trained on.
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ravel_bench.data import RELEASE_SPLITS, EntityTypeRelease, default_cache_dir
from ravel_bench.errors import ConfigError
from ravel_bench.toy_attributes import FactorizedEntityEmbedding, attribute_basis, swap_projections
from ravel_bench.toy_tokenizer import build_word_tokenizer

logger = logging.getLogger(__name__)

# Bump when the recipe below changes: it is part of every cache folder name.
RECIPE_VERSION = 3
METADATA_FILE = "toy_model.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", METADATA_FILE)
_ENTITY_PATTERN = re.compile(r"\w+")

# Recipe constants (not config fields; changing one means bumping RECIPE_VERSION).
_MLP_RATIO = 4  # intermediate_size = 4 * d_model
_MAX_POSITIONS = 128  # the longest RAVEL template is about 50 tokens with its answer
_WARMUP_FRACTION = 0.05  # linear warmup, then cosine decay to _FINAL_LR_FRACTION * lr
_FINAL_LR_FRACTION = 0.1
_WEIGHT_DECAY = 0.01
_BETAS = (0.9, 0.98)
_GRAD_CLIP = 1.0
_LOG_EVERY = 50  # steps between loss syncs (.item()) for logging and the progress bar
# Share of each batch per kind of text: fact lists, RAVEL templates, Wikipedia contexts.
# A "swaps" draw adds a base and a source sequence, trained as a full swap of the entity's
# residual stream after the middle block or as an attribute swap (see the module doc).
_MIX = {"facts": 0.30, "templates": 0.0, "swaps": 0.60, "wikipedia": 0.10}
# With ``attribute_dim > 0``, this share of the swap draws swaps one attribute's subspace only.
_ATTRIBUTE_SWAP_SHARE = 0.5
_ATTRIBUTE_CAUSE_SHARE = 0.5  # of the attribute swaps, those swapping the queried attribute
# Of the full swaps, those whose source is the source entity in another (random) template, as
# RAVEL's pairs are; the others use the base's own template.
_CROSS_TEMPLATE_SHARE = 0.5
_MAX_LIST_ITEMS = 4  # entities per fact list
# Fact-list syntax: (opener, closer) around an entity's values, and the separators.
_BRACKETS = (("", ""), (",", ""), ("(", ")"), (":", ""), ("-", ""))
_VALUE_SEPARATOR = ","
_ITEM_SEPARATOR = ";"
_HEADER_END = ":"
_EVAL_SAMPLE = 1024  # template prompts checked after training (recorded in toy_model.json)
_CAUSE_SAMPLE = 256  # of which the first ones also serve as bases of full swaps, per block


@dataclass(frozen=True)
class ToyModelConfig:
    """How to build the toy target model; every field is part of its cache folder name.

    Args:
        entity_type: the RAVEL entity type whose facts are learned.
        attributes: the attributes learned; each must have ground truth in the release.
        n_entities: how many entities are learned, chosen with ``seed`` among entities whose
            name is one ``\\w+`` word, spread over the release's train/val/test entity splits in
            proportion to their sizes.
        n_layers: decoder blocks, at least 2.
        d_model: hidden size; the MLP is 4 times wider.
        n_heads: attention heads; ``d_model / n_heads`` must be even (rotary embeddings).
        train_steps: optimizer steps.
        batch_size: texts drawn per step (a swap pair counts once but is two sequences).
        lr: peak AdamW learning rate (linear warmup, cosine decay to a tenth).
        attribute_dim: directions of the entity's input embedding that each attribute owns,
            trained with factorized embeddings and attribute swaps (see
            :mod:`ravel_bench.toy_attributes`); 0 trains full swaps only, which leaves the
            attributes entangled.
        seed: seeds the entity choice, the initialization and the training data order.
    """

    entity_type: str = "city"
    attributes: tuple[str, ...] = ("Continent", "Country", "Language", "Timezone")
    n_entities: int = 200
    n_layers: int = 6
    d_model: int = 128
    n_heads: int = 4
    train_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    attribute_dim: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.attributes, list):
            object.__setattr__(self, "attributes", tuple(self.attributes))
        if not isinstance(self.entity_type, str) or not self.entity_type:
            _bad("entity_type", self.entity_type, "a non-empty entity type name, e.g. 'city'")
        if (
            not isinstance(self.attributes, tuple)
            or not self.attributes
            or not all(isinstance(a, str) and a for a in self.attributes)
            or len(set(self.attributes)) != len(self.attributes)
        ):
            _bad("attributes", self.attributes, "a non-empty tuple of distinct attribute names")
        for name, low in (
            ("n_entities", 2),
            ("n_layers", 2),  # swap training needs a block after the swapped ones
            ("d_model", 2),
            ("n_heads", 1),
            ("train_steps", 1),
            ("batch_size", 1),
            ("attribute_dim", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                _bad(name, value, f"an integer >= {low}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            _bad("d_model", self.d_model, f"a multiple of 2 * n_heads (n_heads={self.n_heads})")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            _bad("lr", self.lr, "a finite number > 0")
        if self.attribute_dim * len(self.attributes) > self.d_model:
            _bad(
                "attribute_dim",
                self.attribute_dim,
                f"at most d_model / len(attributes) = {self.d_model // len(self.attributes)}",
            )

    def name(self) -> str:
        """Return the cache folder name, e.g. ``toy-llama-city-6x128-1a2b3c4d``.

        The suffix hashes every field and :data:`RECIPE_VERSION`, so a different config or recipe
        never reuses a folder.
        """
        payload = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        return f"toy-llama-{self.entity_type}-{self.n_layers}x{self.d_model}-{digest}"

    @classmethod
    def from_dict(cls, data: dict) -> "ToyModelConfig":
        """Rebuild a config from :func:`dataclasses.asdict` output; unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ConfigError(f"unknown ToyModelConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# Tests and smoke runs: well under a minute on 2 CPU cores; answers most of its training prompts
# (two attributes), with no other target.
TINY_TOY_CONFIG = ToyModelConfig(
    attributes=("Continent", "Country"),
    n_entities=20,
    n_layers=2,
    d_model=64,
    n_heads=2,
    train_steps=250,
    batch_size=32,
    lr=3e-3,
    attribute_dim=4,
)


def _bad(field_name: str, value: object, expected: str) -> None:
    raise ConfigError(f"ToyModelConfig.{field_name} must be {expected}; got {value!r}")


def select_entities(release: EntityTypeRelease, config: ToyModelConfig) -> dict[str, str]:
    """Choose the entities the toy model learns, with their release splits.

    Eligible entities have a one-word (``\\w+``) name, a release split and a non-empty value for
    every configured attribute. Each split gets a share of ``n_entities`` proportional to its
    number of eligible entities (largest remainder, at least one each when possible); within a
    split the entities are drawn with ``config.seed``.

    Returns:
        ``{entity: split}`` in release order.

    Raises:
        ConfigError: the release lacks an attribute or has too few eligible entities.
    """
    if release.entity_type != config.entity_type:
        raise ConfigError(
            f"the release given is for entity type {release.entity_type!r}, the config asks for "
            f"{config.entity_type!r}; pass release.types[{config.entity_type!r}]"
        )
    missing = [a for a in config.attributes if a not in release.attributes]
    if missing:
        raise ConfigError(
            f"ToyModelConfig.attributes {missing} have no ground truth in the {release.entity_type!r} "
            f"release; available: {list(release.attributes)}"
        )
    by_split: dict[str, list[str]] = {s: [] for s in RELEASE_SPLITS}
    for entity, values in release.entity_attributes.items():
        split = release.entity_split.get(entity)
        if (
            split in by_split
            and _ENTITY_PATTERN.fullmatch(entity)
            and all(values.get(a, "").strip() for a in config.attributes)
        ):
            by_split[split].append(entity)
    n_eligible = sum(len(v) for v in by_split.values())
    if config.n_entities > n_eligible:
        raise ConfigError(
            f"ToyModelConfig.n_entities must be at most {n_eligible} (the one-word entities with "
            f"all of {list(config.attributes)}); got {config.n_entities}"
        )
    quota = _split_quota(config.n_entities, {s: len(v) for s, v in by_split.items()})
    generator = torch.Generator().manual_seed(config.seed)
    chosen: set[str] = set()
    for split in RELEASE_SPLITS:
        pool = by_split[split]
        order = torch.randperm(len(pool), generator=generator).tolist()
        chosen.update(pool[i] for i in order[: quota[split]])
    return {e: release.entity_split[e] for e in release.entity_attributes if e in chosen}


def _split_quota(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """Share ``n`` among splits in proportion to ``sizes`` (largest remainder, >= 1 if possible)."""
    total = sum(sizes.values())
    exact = {s: n * size / total for s, size in sizes.items()}
    quota = {
        s: min(sizes[s], max(1 if n >= len(sizes) and sizes[s] else 0, int(x)))
        for s, x in exact.items()
    }
    by_remainder = sorted(sizes, key=lambda s: (quota[s] - exact[s], s))
    while sum(quota.values()) < n:
        for s in by_remainder:
            if quota[s] < sizes[s] and sum(quota.values()) < n:
                quota[s] += 1
    while sum(quota.values()) > n:
        s = max((s for s in quota if quota[s] > 1), key=lambda s: (quota[s] - exact[s], s))
        quota[s] -= 1
    return quota


def _answer_text(template: str, value: str) -> str:
    """Return ``template`` followed by ``value`` and a terminator (a closing quote or a period)."""
    stripped = template.rstrip()
    joiner = "" if stripped.endswith(('"', "(")) and stripped == template else " "
    terminator = '"' if stripped.endswith('"') else " ."
    return f"{template}{joiner}{value}{terminator}"


def _usable_wikipedia(release: EntityTypeRelease) -> list[str]:
    """Wikipedia templates whose ``%s`` is a separate word (5 city ones glue it: ``%sspor``)."""
    return sorted(t for t in release.wikipedia if not re.search(r"\w%s|%s\w", t))


class _Corpus:
    """Token-id sequences of the three kinds of training text, sampled with one generator."""

    def __init__(
        self,
        release: EntityTypeRelease,
        config: ToyModelConfig,
        entities: list[str],
        tokenizer: PreTrainedTokenizerFast,
    ) -> None:
        self.config = config
        self.entities = entities
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.entity_id = [tokenizer.convert_tokens_to_ids(e) for e in entities]
        # [entity][attribute] -> value ids
        self.values = [
            [ids(release.entity_attributes[e][a]) for a in config.attributes] for e in entities
        ]
        self.attribute_names = [ids(a.lower().replace("_", " ")) for a in config.attributes]
        self.punct = {p: tokenizer.convert_tokens_to_ids(p) for p in _fact_punctuation()}
        # Every template of every configured attribute, filled with every entity, with its answer.
        prompts, answers = [], []
        for a in config.attributes:
            for t in release.attribute_templates.get(a, []):
                for e in entities:
                    prompts.append(t.replace("%s", e, 1))
                    answers.append(
                        _answer_text(t, release.entity_attributes[e][a]).replace("%s", e, 1)
                    )
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        self.templates = [[self.bos, *x, self.eos] for x in answer_ids]
        # Position of the entity in each template's sequences (after <s> and the prefix); the
        # sequences of template k are templates[k * n_entities : (k + 1) * n_entities].
        self.entity_pos = [
            1 + len(ids(t.split("%s", 1)[0]))
            for a in config.attributes
            for t in release.attribute_templates.get(a, [])
        ]
        # The attribute (index into config.attributes) each template queries.
        self.template_attribute = [
            j
            for j, a in enumerate(config.attributes)
            for _ in release.attribute_templates.get(a, [])
        ]
        # Tokens after the prompt (value, terminator, </s>); 0 if the prompt is not a prefix.
        self.answer_len = [
            len(full) - len(p) + 1 if full[: len(p)] == p else 0
            for p, full in zip(prompt_ids, answer_ids, strict=True)
        ]
        # Wikipedia contexts as (prefix ids, suffix ids); filled with a random entity when drawn.
        self.wikipedia = [
            tuple(ids(p) for p in t.split("%s", 1)) for t in _usable_wikipedia(release)
        ]

    def batch(
        self, size: int, generator: torch.Generator
    ) -> tuple[list[list[int]], list[tuple[int, int, int, int, int]]]:
        """Draw ``size`` texts (each starting with ``<s>``) in the proportions of ``_MIX``.

        Returns:
            The sequences, and the swap pairs as ``(base index, source index, base entity
            position, source entity position, subspace)`` into them: a ``"swaps"`` draw adds a
            base sequence (a template filled with one entity and answered for another, the
            source entity) and a source sequence (the source entity in the same template, or in
            another for a share of full swaps). ``subspace`` is 0 for a full swap (the base
            continues like the source), or ``1 + j`` for a swap of attribute ``j``'s subspace
            only (the base answers like the source if the template queries attribute ``j``,
            else with its own value).
        """
        kinds = list(_MIX)
        draws = torch.multinomial(
            torch.tensor([_MIX[k] for k in kinds]), size, replacement=True, generator=generator
        ).tolist()
        seqs: list[list[int]] = []
        pairs: list[tuple[int, int, int, int, int]] = []
        for k in draws:
            if kinds[k] == "swaps":
                base, source, base_pos, source_pos, subspace = self._draw_swap(generator)
                pairs.append((len(seqs), len(seqs) + 1, base_pos, source_pos, subspace))
                seqs += [base, source]
            else:
                seqs.append(getattr(self, f"_draw_{kinds[k]}")(generator))
        return seqs, pairs

    def _draw_swap(self, generator: torch.Generator) -> tuple[list[int], list[int], int, int, int]:
        n = len(self.entities)
        template = self._randint(len(self.entity_pos), generator)
        source = self._randint(n, generator)
        base = (source + 1 + self._randint(n - 1, generator)) % n  # any other entity
        pos = self.entity_pos[template]
        source_seq = self.templates[template * n + source]
        base_seq = [*source_seq[:pos], self.entity_id[base], *source_seq[pos + 1 :]]
        subspace = 0
        if self.config.attribute_dim and torch.rand(1, generator=generator) < _ATTRIBUTE_SWAP_SHARE:
            queried = self.template_attribute[template]
            swapped = queried  # cause: the base answers with the source's value
            if torch.rand(1, generator=generator) >= _ATTRIBUTE_CAUSE_SHARE:
                n_attr = len(self.config.attributes)  # isolate: the base keeps its own value
                swapped = (queried + 1 + self._randint(n_attr - 1, generator)) % n_attr
                base_seq = self.templates[template * n + base]
            subspace = 1 + swapped
        source_pos = pos
        if subspace == 0 and torch.rand(1, generator=generator) < _CROSS_TEMPLATE_SHARE:
            other = self._randint(len(self.entity_pos), generator)
            source_seq, source_pos = self.templates[other * n + source], self.entity_pos[other]
        return base_seq, source_seq, pos, source_pos, subspace

    def _randint(self, n: int, generator: torch.Generator) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    def _draw_templates(self, generator: torch.Generator) -> list[int]:
        return self.templates[self._randint(len(self.templates), generator)]

    def _draw_wikipedia(self, generator: torch.Generator) -> list[int]:
        if not self.wikipedia:
            return self._draw_templates(generator)
        prefix, suffix = self.wikipedia[self._randint(len(self.wikipedia), generator)]
        entity = self.entity_id[self._randint(len(self.entities), generator)]
        return [self.bos, *prefix, entity, *suffix]

    def _draw_facts(self, generator: torch.Generator) -> list[int]:
        """A list like ``country , language : Paris ( France , French ) ; Oslo ( Norway , ...``."""
        n_attr = len(self.config.attributes)
        order = torch.randperm(n_attr, generator=generator).tolist()[
            : 1 + self._randint(n_attr, generator)
        ]
        opener, closer = _BRACKETS[self._randint(len(_BRACKETS), generator)]
        n_items = 1 + self._randint(_MAX_LIST_ITEMS, generator)
        items = torch.randperm(len(self.entities), generator=generator)[:n_items].tolist()
        out = [self.bos]
        if self._randint(2, generator):  # a header naming the attributes, in order
            for j, a in enumerate(order):
                out += ([self.punct[_VALUE_SEPARATOR]] if j else []) + self.attribute_names[a]
            out.append(self.punct[_HEADER_END])
        for i, e in enumerate(items):
            if i:
                out.append(self.punct[_ITEM_SEPARATOR])
            out.append(self.entity_id[e])
            if opener:
                out.append(self.punct[opener])
            for j, a in enumerate(order):
                out += ([self.punct[_VALUE_SEPARATOR]] if j else []) + self.values[e][a]
            if closer:
                out.append(self.punct[closer])
        out.append(self.eos)
        return out


def _fact_punctuation() -> list[str]:
    marks = {_VALUE_SEPARATOR, _ITEM_SEPARATOR, _HEADER_END}
    marks.update(p for pair in _BRACKETS for p in pair if p)
    return sorted(marks)


def _vocabulary_texts(
    release: EntityTypeRelease, config: ToyModelConfig, entities: list[str]
) -> list[str]:
    texts = list(entities)
    texts += [release.entity_attributes[e][a] for e in entities for a in config.attributes]
    texts += [t for ts in release.attribute_templates.values() for t in ts]
    texts += list(release.wikipedia)
    texts += [a.lower().replace("_", " ") for a in config.attributes]
    texts += _fact_punctuation()
    texts += [" .", '"']  # answer terminators
    return texts


def _collate(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``seqs`` into a batch; padded positions get label -100 and attention 0."""
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)  # [batch, pos]
    attention = torch.zeros((len(seqs), length), dtype=torch.long)  # [batch, pos]
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)  # [batch, pos]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _pack(
    seqs: list[list[int]], pad_id: int
) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Pack ``seqs`` into rows as long as the longest one, each sequence attending only to itself.

    First-fit decreasing. Positions restart at 0 with every sequence, and no attention mask is
    passed, so transformers builds a block-diagonal causal mask from the position ids (packed
    sequence format; the forward pass needs ``use_cache=False``). Labels are -100 on padding and
    on each sequence's first token.

    Returns:
        The model inputs, and ``(row, start)`` of every sequence, in input order.
    """
    length = max(len(s) for s in seqs)
    rows: list[list[int]] = []  # indices into seqs
    room: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i)):
        row = next((r for r in range(len(rows)) if room[r] >= len(seqs[i])), None)
        if row is None:
            rows.append([])
            room.append(length)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= len(seqs[i])
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # [batch, pos]
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)  # [batch, pos]
    labels = torch.full((len(rows), length), -100, dtype=torch.long)  # [batch, pos]
    where = [(0, 0)] * len(seqs)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            s, end = seqs[i], start + len(seqs[i])
            where[i] = (r, start)
            input_ids[r, start:end] = torch.tensor(s)
            position_ids[r, start:end] = torch.arange(len(s))
            labels[r, start + 1 : end] = input_ids[r, start + 1 : end]
            start = end
        # Padding continues the last sequence's positions, so it never forms a sequence of its own
        # that begins at position 0 (it is causal and unlabeled: it changes no real token).
        last = len(seqs[row[-1]])
        position_ids[r, start:] = torch.arange(last, last + length - start)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}, where


@contextmanager
def _swapped(
    model: LlamaForCausalLM,
    block: int | None,
    base: torch.Tensor,
    source: torch.Tensor,
    projection: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the context, swap the residual stream after ``block`` from source to base sites.

    Args:
        model: the model being trained or checked.
        block: decoder block whose output is edited; ``None`` edits the input embeddings.
        base: ``[n, 2]`` (batch row, position) sites that receive the vectors.
        source: ``[n, 2]`` sites whose vectors are swapped in, in the same forward pass.
        projection: ``[n, d_model, d_model]``: base site ``i`` becomes
            ``base + (source - base) @ projection[i]``; ``None`` copies the whole vector.
    """

    def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor | tuple) -> object:
        hidden = out[0] if isinstance(out, tuple) else out  # [batch, pos, d_model]
        if hidden.shape[1] == 1:  # a generated token: the prompt pass was already edited
            return out
        vectors = hidden[source[:, 0], source[:, 1]]  # [n, d_model], a copy
        if projection is not None:
            old = hidden[base[:, 0], base[:, 1]]  # [n, d_model]
            delta = torch.einsum("nd,nde->ne", vectors - old, projection.to(hidden.dtype))
            vectors = old + delta
        new = hidden.index_put((base[:, 0], base[:, 1]), vectors)  # [batch, pos, d_model]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    module = model.model.embed_tokens if block is None else model.model.layers[block]
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _swap_block(n_layers: int) -> int:
    """Return the block after which swap training edits the entity: the middle, ``n_layers // 2``.

    At most ``n_layers - 2``, so that a later block can still read the entity. Reads of the entity
    are pushed past this block; a swap after an earlier block works as well, since it leaves the
    entity's own later vectors exactly the source's (both prompts share the prefix).
    """
    return min(n_layers - 2, n_layers // 2)


def toy_attribute_basis(config: ToyModelConfig) -> torch.Tensor:
    """The directions of the embedding space that each attribute owns during training.

    Deterministic from the config (see :mod:`ravel_bench.toy_attributes`): a reference for
    analyses of the toy, never given to the methods.

    Returns:
        ``[n_attributes, attribute_dim, d_model]`` in the order of ``config.attributes``.
    """
    return attribute_basis(
        config.d_model, len(config.attributes), config.attribute_dim, config.seed
    )


def _factorize_entities(
    model: LlamaForCausalLM,
    corpus: "_Corpus",
    release: EntityTypeRelease,
    config: ToyModelConfig,
    basis: torch.Tensor,
) -> FactorizedEntityEmbedding:
    """Replace the model's input embedding by a factorized one (undone by ``materialize``)."""
    names = corpus.entities
    value_index = []
    for attribute in config.attributes:
        values = sorted({release.entity_attributes[e][attribute] for e in names})
        value_index.append([values.index(release.entity_attributes[e][attribute]) for e in names])
    factorized = FactorizedEntityEmbedding(
        model.model.embed_tokens,
        torch.tensor(corpus.entity_id, dtype=torch.long),
        torch.tensor(value_index, dtype=torch.long),
        basis,
        torch.Generator().manual_seed(config.seed + 2),
    )
    model.model.embed_tokens = factorized
    return factorized


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(_WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return _FINAL_LR_FRACTION + (1 - _FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def _facts_fingerprint(
    release: EntityTypeRelease, config: ToyModelConfig, entities: dict[str, str]
) -> str:
    facts = {
        e: [split, *(release.entity_attributes[e][a] for a in config.attributes)]
        for e, split in entities.items()
    }
    texts = sorted(t for a in config.attributes for t in release.attribute_templates.get(a, []))
    payload = json.dumps(
        {"facts": facts, "templates": texts, "wikipedia": _usable_wikipedia(release)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.no_grad()
def _answer_accuracy(
    model: LlamaForCausalLM,
    corpus: _Corpus,
    sample: list[int],
    batch_size: int,
    swap_block: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Return the share of template sequences whose whole answer is predicted greedily.

    Teacher-forced: each answer token (value, terminator, ``</s>``) must be the argmax given the
    prompt and the answer's own prefix, which is what greedy decoding of the answer checks.
    With ``swap_block``, each prompt is the base of a full swap after that block, from the same
    template filled with another entity (drawn with ``generator``); the expected answer is the
    source entity's (the full-swap Cause, DESIGN.md section 4).
    """
    n = len(corpus.entities)
    correct = 0
    for start in range(0, len(sample), batch_size):
        chunk = sample[start : start + batch_size]
        seqs = [corpus.templates[i] for i in chunk]
        sites = []
        if swap_block is not None:
            for row, i in enumerate(chunk):
                template, source = divmod(i, n)
                other = (source + 1 + int(torch.randint(n - 1, (1,), generator=generator))) % n
                pos = corpus.entity_pos[template]
                seqs.append([*seqs[row][:pos], corpus.entity_id[other], *seqs[row][pos + 1 :]])
                sites.append(((len(chunk) + row, pos), (row, pos)))  # (base, source)
        batch = _collate(seqs, pad_id=0)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if swap_block is None:
            logits = model(**inputs).logits  # [batch, pos, vocab]
        else:
            base, source = (torch.tensor([s[k] for s in sites]) for k in (0, 1))
            with _swapped(model, swap_block, base, source):
                logits = model(**inputs).logits  # [batch, pos, vocab]
            logits = logits[len(chunk) :]  # the bases, expected to answer like their sources
        predicted = logits.argmax(-1)  # [batch, pos]: the prediction for position pos + 1
        for row, i in enumerate(chunk):
            length, k = len(corpus.templates[i]), corpus.answer_len[i]
            target = batch["input_ids"][row, length - k : length]  # [k]
            correct += bool((predicted[row, length - k - 1 : length - 1] == target).all())
    return correct / max(1, len(sample))


def build_toy_model(
    release: EntityTypeRelease,
    config: ToyModelConfig = ToyModelConfig(),  # noqa: B008 - frozen, so a shared default is safe
    out_dir: Path | None = None,
    *,
    show_progress: bool = True,
) -> Path:
    """Train the toy target model on ``release``'s facts and save it, or reuse a saved one.

    Args:
        release: one entity type of the RAVEL release (``load_release(...).types["city"]``).
        config: the model, data and training settings; its :meth:`ToyModelConfig.name` names the
            default folder.
        out_dir: where to save; default ``default_cache_dir() / "models" / config.name()``.
            Written into a temporary sibling folder and renamed when complete.
        show_progress: show a tqdm progress bar over training steps.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained`` (see :func:`load_toy_model`).

    Raises:
        ConfigError: the config does not fit the release, or ``out_dir`` holds something else
            (another toy model, other facts, or an unfinished folder).
    """
    out_dir = (
        Path(out_dir) if out_dir is not None else default_cache_dir() / "models" / config.name()
    )
    entities = select_entities(release, config)
    fingerprint = _facts_fingerprint(release, config, entities)
    if _check_existing(out_dir, config, fingerprint):
        logger.info("toy model %s already built at %s", config.name(), out_dir)
        return out_dir

    start = time.perf_counter()
    names = list(entities)
    tokenizer = build_word_tokenizer(_vocabulary_texts(release, config, names), _MAX_POSITIONS)
    corpus = _Corpus(release, config, names, tokenizer)
    logger.info(
        "training toy model %s: %d entities, %d template prompts, %d Wikipedia contexts, vocabulary %d",
        config.name(),
        len(names),
        len(corpus.templates),
        len(corpus.wikipedia),
        len(tokenizer),
    )
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=_MLP_RATIO * config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # the initialization must not touch global RNG state
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(model_config)
    model.train()
    projections, factorized = None, None  # attribute swaps only with attribute_dim > 0
    if config.attribute_dim:
        basis = toy_attribute_basis(config)  # [n_attributes, attribute_dim, d_model]
        projections = swap_projections(basis)  # [1 + n_attributes, d_model, d_model]
        factorized = _factorize_entities(model, corpus, release, config, basis)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=_BETAS, weight_decay=_WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.train_steps)
    )
    block = _swap_block(config.n_layers)
    bar = tqdm(
        range(config.train_steps), desc=f"training {config.name()}", disable=not show_progress
    )
    loss_sum = torch.zeros(())
    for step in bar:
        seqs, pairs = corpus.batch(config.batch_size, generator)
        batch, where = _pack(seqs, tokenizer.pad_token_id)
        # [n_pairs, 2] (row, position) of each pair's entity in the packed batch
        base = torch.tensor(
            [[where[b][0], where[b][1] + p] for b, _, p, _, _ in pairs], dtype=torch.long
        ).view(-1, 2)
        source = torch.tensor(
            [[where[s][0], where[s][1] + p] for _, s, _, p, _ in pairs], dtype=torch.long
        ).view(-1, 2)
        subspace = torch.tensor([j for *_, j in pairs], dtype=torch.long)
        full, partial = subspace == 0, subspace > 0
        with ExitStack() as swaps:
            swaps.enter_context(_swapped(model, block, base[full], source[full]))
            if partial.any():  # attribute swaps edit the input embeddings
                swaps.enter_context(
                    _swapped(
                        model, None, base[partial], source[partial], projections[subspace[partial]]
                    )
                )
            loss = model(**batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        if (step + 1) % _LOG_EVERY == 0 or step + 1 == config.train_steps:
            mean_loss = loss_sum.item() / (step % _LOG_EVERY + 1)  # sync point
            loss_sum.zero_()
            bar.set_postfix(loss=f"{mean_loss:.3f}")
            logger.debug("step %d/%d: loss %.4f", step + 1, config.train_steps, mean_loss)
    train_s = time.perf_counter() - start
    model.eval()
    if factorized is not None:  # back to a plain embedding table, as saved
        model.model.embed_tokens = factorized.materialize()
    order = torch.randperm(len(corpus.templates), generator=generator).tolist()
    sample = [i for i in order if corpus.answer_len[i]][:_EVAL_SAMPLE]
    eval_batch = 4 * config.batch_size
    accuracy = _answer_accuracy(model, corpus, sample, eval_batch)
    cause = [
        _answer_accuracy(model, corpus, sample[:_CAUSE_SAMPLE], eval_batch, block, generator)
        for block in range(config.n_layers)
    ]
    logger.info(
        "toy model trained in %.0f s: final loss %.3f, answers %.1f%% of %d sampled template "
        "prompts; full-swap Cause by block %s",
        train_s,
        mean_loss,
        100 * accuracy,
        len(sample),
        " ".join(f"{c:.2f}" for c in cause),
    )
    metadata = {
        "format": "ravel-bench-toy-model",
        "recipe_version": RECIPE_VERSION,
        "name": config.name(),
        "config": asdict(config),
        "entity_type": config.entity_type,
        "attributes": list(config.attributes),
        "entities": entities,
        "facts_sha256": fingerprint,
        "final_loss": mean_loss,
        "answer_accuracy": accuracy,
        "answer_accuracy_prompts": len(sample),
        "full_swap_cause_by_block": cause,
        "full_swap_cause_prompts": len(sample[:_CAUSE_SAMPLE]),
        "train_seconds": round(train_s, 1),
    }
    _save_atomically(out_dir, model, tokenizer, metadata)
    logger.info("toy model saved to %s", out_dir)
    return out_dir


def _check_existing(out_dir: Path, config: ToyModelConfig, fingerprint: str) -> bool:
    """Return True if ``out_dir`` is this very build; False if absent or empty; else raise."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return False
    hint = "delete the folder or pass another out_dir"
    if not all((out_dir / f).is_file() for f in _REQUIRED_FILES):
        raise ConfigError(f"{out_dir} exists but is not a complete toy model folder", hint=hint)
    try:
        metadata = json.loads((out_dir / METADATA_FILE).read_text())
        built = ToyModelConfig.from_dict(metadata["config"])
        built_fingerprint = metadata["facts_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{out_dir / METADATA_FILE} is unreadable: {e}", hint=hint) from e
    if built != config:
        raise ConfigError(
            f"{out_dir} holds a toy model built with {built}, not {config}", hint=hint
        )
    if built_fingerprint != fingerprint:
        raise ConfigError(
            f"{out_dir} holds a toy model trained on other facts than this release gives for "
            f"the same config (facts fingerprint {built_fingerprint[:12]} != {fingerprint[:12]})",
            hint=hint,
        )
    return True


def _save_atomically(
    out_dir: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, metadata: dict
) -> None:
    """Save into a temporary sibling of ``out_dir``, then rename it to ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except OSError:
        if out_dir.is_dir() and all((out_dir / f).is_file() for f in _REQUIRED_FILES):
            logger.info("another process saved %s first; keeping its copy", out_dir)
            return
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_toy_model(path: str | Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load a saved toy model and its tokenizer, the model in eval mode.

    Exactly the code path of a Hub model: ``AutoModelForCausalLM.from_pretrained(path)`` and
    ``AutoTokenizer.from_pretrained(path)``.
    """
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
