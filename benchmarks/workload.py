"""The benchmark's inputs: seeded random-weight Llama models, a word tokenizer and RAVEL pairs.

No weights can be downloaded and the embedded toy model takes minutes to train, so the models
are ``LlamaForCausalLM`` built from a config with seeded random weights. Their greedy
generations are still deterministic, so the two implementations can be compared token by token.

Pairs come from the RAVEL city release through the instance's own pair sampler
(:func:`ravel_bench.instance.pairs.sample_pairs`, train setting): base = (train template,
train entity), source = (train template of any attribute or train Wikipedia context, train
entity), as in a built instance. A random model knows nothing, so each cell's label is the
ground-truth value rather than the model's output (the label only drives which source entities
are eligible; it does not change the cost).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ravel_bench.data import EntityTypeRelease, load_release
from ravel_bench.engine.positions import encode_rows
from ravel_bench.instance.build import RavelInstance, label_token_ids
from ravel_bench.instance.pairs import Cell, PairPools, sample_pairs
from ravel_bench.toy_tokenizer import build_word_tokenizer

# The embedded toy model's four attributes (README "The embedded default model").
ATTRIBUTES: tuple[str, ...] = ("Continent", "Country", "Language", "Timezone")


@dataclass(frozen=True)
class ModelShape:
    """A Llama configuration, sized by a few fields.

    Args:
        name: the label in the result tables.
        n_layers: decoder blocks.
        d_model: residual stream width.
        n_heads: attention heads (``n_kv_heads`` key/value heads, grouped-query attention).
        d_mlp: MLP width.
        layer: the intervention site, ``blocks.{layer}.resid_post``.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    layer: int


# The embedded toy model's shape, and a wider one where matmuls outweigh Python overhead.
TOY = ModelShape(
    "llama 6x128", n_layers=6, d_model=128, n_heads=4, n_kv_heads=2, d_mlp=512, layer=2
)
WIDE = ModelShape(
    "llama 8x512", n_layers=8, d_model=512, n_heads=8, n_kv_heads=4, d_mlp=1408, layer=3
)
SHAPES = {"toy": TOY, "wide": WIDE}


@dataclass
class Workload:
    """A tokenizer and the pairs sampled for it.

    Args:
        tokenizer: word-level, one token per entity; left padding.
        pairs: pair dicts with the instance's fields (``base_template``, ``entity``,
            ``source_template``, ``source_entity``, ``attribute``, ``label``, ``inv_label``...).
    """

    tokenizer: PreTrainedTokenizerFast
    pairs: list[dict[str, str]]

    def subset(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """A seeded random subset of ``n`` pairs (all pairs when there are fewer)."""
        if n >= len(self.pairs):
            return list(self.pairs)
        keep = np.sort(np.random.default_rng(seed).choice(len(self.pairs), n, replace=False))
        return [self.pairs[i] for i in keep.tolist()]

    def instance(self) -> RavelInstance:
        """The pairs as a (train-only) instance, for :func:`ravel_bench.training.train_intervention`."""
        return RavelInstance(
            metadata={"entity_type": "city", "attributes": list(ATTRIBUTES)},
            pairs={"train/train": self.pairs},
        )


def build_workload(
    release: str | Path | EntityTypeRelease,
    n_entities: int,
    *,
    templates_per_attribute: int = 6,
    seed: int = 0,
) -> Workload:
    """Sample train-setting pairs over ``n_entities`` train cities.

    Args:
        release: the release source (``../shared/ravel/data.tgz``) or its loaded city part.
        n_entities: train entities to use; pairs number about
            ``len(ATTRIBUTES) * templates_per_attribute * n_entities``.
        templates_per_attribute: train templates kept per attribute (an instance keeps 6).
        seed: entity choice and pair sampling.
    """
    city = (
        release
        if isinstance(release, EntityTypeRelease)
        else load_release(release, ("city",)).types["city"]
    )
    rng = np.random.default_rng(seed)
    candidates = sorted(
        e
        for e, split in city.entity_split.items()
        if split == "train"
        and e.isalpha()
        and all(city.entity_attributes[e][a].strip() for a in ATTRIBUTES)
    )
    chosen = rng.choice(len(candidates), min(n_entities, len(candidates)), replace=False)
    entities = [candidates[i] for i in np.sort(chosen).tolist()]
    templates = {
        t: (a, "train")
        for a in ATTRIBUTES
        for t in sorted(
            t for t in city.attribute_templates[a] if city.template_split[t] == "train"
        )[:templates_per_attribute]
    }
    wikipedia = {
        t: (split, named)
        for t, (split, named) in city.other_contexts().items()
        if split == "train" and (named is None or named in entities)
    }
    values = [city.entity_attributes[e][a] for e in entities for a in ATTRIBUTES]
    tokenizer = build_word_tokenizer(
        [*templates, *wikipedia, *entities, *values], model_max_length=512
    )
    cell_t = [t for t in templates for _ in entities]
    cell_e = [e for _ in templates for e in entities]
    labels = [
        " " + city.entity_attributes[e][templates[t][0]]
        for t, e in zip(cell_t, cell_e, strict=True)
    ]
    keys = label_token_ids(
        tokenizer, [t % e for t, e in zip(cell_t, cell_e, strict=True)], labels, n=3
    )
    cells = {
        (t, e): Cell(label=label, correct=True, key=tuple(key))
        for t, e, label, key in zip(cell_t, cell_e, labels, keys, strict=True)
    }
    pools = PairPools(
        entity_split={e: "train" for e in entities},
        templates=templates,
        wikipedia=wikipedia,
        cells=cells,
    )
    pairs = sample_pairs(pools, "train", "train", c=10.0, seed=seed)
    return Workload(tokenizer=tokenizer, pairs=pairs)


def build_model(
    shape: ModelShape,
    vocab_size: int,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A random-weight Llama of ``shape`` in eval mode, seeded, built on ``device`` in ``dtype``.

    ``initializer_range`` is 0.2 (HF's default is 0.02) so that the hidden states, and the
    interventions on them, visibly change the greedy outputs. EOS is cleared from the generation
    config: the protocol generates a fixed number of tokens, and ``generate`` would otherwise
    stop a row at EOS and pad it. The weights are drawn on ``device`` (a 7B model is built on
    the GPU in seconds), so the same seed gives different weights on a CPU and on a GPU.
    """
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    device = torch.device(device)
    default_dtype = torch.get_default_dtype()
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None
    model.requires_grad_(False)
    return model


def distinct_sources(pairs: Sequence[dict[str, str]]) -> int:
    """Number of distinct source prompts (template, entity)."""
    return len({(p["source_template"], p["source_entity"]) for p in pairs})


def sources_run(tokenizer: PreTrainedTokenizerFast, pairs: Sequence[dict[str, str]]) -> int:
    """Source rows ravel-bench actually runs: distinct token sequences up to the entity's last
    token (:func:`ravel_bench.engine.interchange.source_vectors` runs each once)."""
    encoded = encode_rows(
        tokenizer, [p["source_template"] for p in pairs], [p["source_entity"] for p in pairs]
    )
    return len(
        {tuple(ids[: last + 1]) for ids, last in zip(encoded.ids, encoded.last, strict=True)}
    )
