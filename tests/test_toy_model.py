"""The embedded toy target model: tokenizer, folder format, determinism and cache."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ravel_bench.data import EntityTypeRelease, default_cache_dir, load_release
from ravel_bench.errors import ConfigError
from ravel_bench.toy_model import (
    _MAX_POSITIONS,
    METADATA_FILE,
    TINY_TOY_CONFIG,
    ToyModelConfig,
    _Corpus,
    _pack,
    _vocabulary_texts,
    build_toy_model,
    load_toy_model,
    select_entities,
    toy_attribute_basis,
)
from ravel_bench.toy_tokenizer import build_word_tokenizer

# Enough to exercise the whole pipeline twice; the trained tiny model is built once per module.
FEW_STEPS = dataclasses.replace(TINY_TOY_CONFIG, train_steps=4)


@pytest.fixture(scope="module")
def city(release_tgz: Path) -> EntityTypeRelease:
    return load_release(release_tgz).types["city"]


@pytest.fixture(scope="module")
def tiny_folder(city: EntityTypeRelease, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / TINY_TOY_CONFIG.name()
    return build_toy_model(city, TINY_TOY_CONFIG, out, show_progress=False)


def test_folder_loads_like_a_hub_model(tiny_folder: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == TINY_TOY_CONFIG.n_layers
    assert model.config.hidden_size == TINY_TOY_CONFIG.d_model
    assert tokenizer.padding_side == "left"
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert len(tokenizer) == model.config.vocab_size
    metadata = json.loads((tiny_folder / METADATA_FILE).read_text())
    assert ToyModelConfig.from_dict(metadata["config"]) == TINY_TOY_CONFIG
    assert len(metadata["entities"]) == TINY_TOY_CONFIG.n_entities
    assert set(metadata["entities"].values()) == {"train", "val", "test"}
    assert len(metadata["full_swap_cause_by_block"]) == TINY_TOY_CONFIG.n_layers


def test_tiny_model_answers_most_training_prompts(tiny_folder: Path) -> None:
    metadata = json.loads((tiny_folder / METADATA_FILE).read_text())
    assert metadata["answer_accuracy"] >= 0.5, metadata["answer_accuracy"]


def test_saved_entities_share_each_attribute_values_code(
    tiny_folder: Path, city: EntityTypeRelease
) -> None:
    """The saved plain embedding table keeps the factorization: same value, same coordinates."""
    model, tokenizer = load_toy_model(tiny_folder)
    entities = list(json.loads((tiny_folder / METADATA_FILE).read_text())["entities"])
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(entities))
    vectors = model.get_input_embeddings().weight[ids].detach()  # [n_entities, d_model]
    basis = toy_attribute_basis(TINY_TOY_CONFIG)  # [n_attributes, attribute_dim, d_model]
    assert basis.shape == (2, TINY_TOY_CONFIG.attribute_dim, TINY_TOY_CONFIG.d_model)
    for j, attribute in enumerate(TINY_TOY_CONFIG.attributes):
        coords = vectors @ basis[j].T  # [n_entities, attribute_dim]
        values = [city.entity_attributes[e][attribute] for e in entities]
        by_value: dict[str, torch.Tensor] = {}
        for value, c in zip(values, coords, strict=True):
            torch.testing.assert_close(c, by_value.setdefault(value, c), atol=1e-5, rtol=0)
        assert len(by_value) > 1
        distinct = torch.stack(list(by_value.values()))
        assert torch.cdist(distinct, distinct).fill_diagonal_(1).min() > 1e-3


def test_load_toy_model_returns_eval_mode(tiny_folder: Path) -> None:
    model, tokenizer = load_toy_model(tiny_folder)
    assert not model.training
    batch = tokenizer(["x is in the continent of", "x , France"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits  # [batch, pos, vocab]
    assert logits.shape[-1] == len(tokenizer)


def test_every_entity_is_one_token_in_every_template(
    tiny_folder: Path, city: EntityTypeRelease
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    entities = list(json.loads((tiny_folder / METADATA_FILE).read_text())["entities"])
    templates = [t for ts in city.attribute_templates.values() for t in ts]
    templates += [t for t in city.wikipedia if not re.search(r"\w%s|%s\w", t)]
    for entity in entities:
        entity_id = tokenizer.convert_tokens_to_ids(entity)
        assert entity_id != tokenizer.unk_token_id, entity
        texts = [t.replace("%s", entity, 1) for t in templates]
        encoded = tokenizer(texts, return_offsets_mapping=True)
        for template, ids, offsets in zip(
            templates, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            start = template.index("%s")
            end = start + len(entity)
            # The token holding the entity's last character, found from offsets only.
            covering = [i for i, (a, b) in enumerate(offsets) if a < end <= b]
            assert len(covering) == 1, (entity, template)
            assert offsets[covering[0]] == (start, end), (entity, template)
            assert ids[covering[0]] == entity_id, (entity, template)


def test_offsets_are_exact_with_left_padding(tiny_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    texts = ['"city": "%s", "country": "', "%s's mayor"]
    entity = next(iter(json.loads((tiny_folder / METADATA_FILE).read_text())["entities"]))
    filled = [t.replace("%s", entity) for t in texts]
    encoded = tokenizer(filled, padding=True, return_offsets_mapping=True)
    assert encoded["input_ids"][1][0] == tokenizer.pad_token_id  # left padding
    for text, ids, offsets in zip(
        filled, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        for token_id, (a, b) in zip(ids, offsets, strict=True):
            if token_id not in tokenizer.all_special_ids:
                assert tokenizer.convert_ids_to_tokens(token_id) == text[a:b]


def test_same_seed_same_weights(city: EntityTypeRelease, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_toy_model(city, FEW_STEPS, tmp_path / "a", show_progress=False)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone
    second = build_toy_model(city, FEW_STEPS, tmp_path / "b", show_progress=False)
    other = build_toy_model(
        city, dataclasses.replace(FEW_STEPS, seed=1), tmp_path / "c", show_progress=False
    )
    a, b, c = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (first, second, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    meta = [json.loads((p / METADATA_FILE).read_text())["entities"] for p in (first, other)]
    assert meta[0] != meta[1]
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)


def test_cached_folder_is_reused(city: EntityTypeRelease) -> None:
    folder = build_toy_model(city, FEW_STEPS, show_progress=False)
    assert folder == default_cache_dir() / "models" / FEW_STEPS.name()
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_toy_model(city, FEW_STEPS, show_progress=False) == folder
    assert weights.stat().st_mtime_ns == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder
    with pytest.raises(ConfigError, match="built with"):
        build_toy_model(city, dataclasses.replace(FEW_STEPS, seed=7), folder, show_progress=False)


def test_incomplete_folder_is_refused(city: EntityTypeRelease, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a complete"):
        build_toy_model(city, FEW_STEPS, tmp_path / "m", show_progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("entity_type", ""),
        ("attributes", ()),
        ("attributes", ("Country", "Country")),
        ("n_entities", 1),
        ("n_layers", 1),
        ("d_model", 30),  # not a multiple of 2 * n_heads
        ("n_heads", 0),
        ("train_steps", 0),
        ("batch_size", 2.5),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("seed", -1),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"ToyModelConfig\.{field}.*{re.escape(repr(value))}"):
        ToyModelConfig(**{field: value})


def test_config_must_fit_the_release(city: EntityTypeRelease) -> None:
    with pytest.raises(ConfigError, match="attributes"):
        select_entities(city, ToyModelConfig(attributes=("Country", "Population")))
    with pytest.raises(ConfigError, match="n_entities"):
        select_entities(city, ToyModelConfig(n_entities=100_000))
    with pytest.raises(ConfigError, match="entity type"):
        select_entities(city, ToyModelConfig(entity_type="verb"))


def test_config_name_and_round_trip() -> None:
    config = ToyModelConfig()
    assert config.name() == ToyModelConfig().name()
    assert config.name().startswith("toy-llama-city-6x128-")
    assert dataclasses.replace(config, seed=1).name() != config.name()
    assert ToyModelConfig.from_dict(dataclasses.asdict(config)) == config
    assert ToyModelConfig(attributes=["Country"]).attributes == ("Country",)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown"):
        ToyModelConfig.from_dict({"n_layer": 2})


def test_entities_spread_over_splits(city: EntityTypeRelease) -> None:
    entities = select_entities(city, ToyModelConfig())
    assert len(entities) == 200
    assert all(re.fullmatch(r"\w+", e) for e in entities)
    counts = {s: list(entities.values()).count(s) for s in ("train", "val", "test")}
    assert min(counts.values()) >= 40, counts
    assert select_entities(city, ToyModelConfig()) == entities


def test_packed_sequences_do_not_see_each_other() -> None:
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    seqs = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 11, 12, 13, 14, 15, 16], [1, 20]]
    batch, where = _pack(seqs, pad_id=3)
    assert batch["input_ids"].shape[0] < len(seqs)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits  # [rows, pos, vocab]
        for seq, (row, start) in zip(seqs, where, strict=True):
            assert batch["input_ids"][row, start : start + len(seq)].tolist() == seq
            alone = model(input_ids=torch.tensor([seq])).logits[0]  # [pos, vocab]
            torch.testing.assert_close(packed[row, start : start + len(seq)], alone)


def test_swap_pairs_teach_the_base_to_answer_like_the_source(city: EntityTypeRelease) -> None:
    """Full swaps: the base's text is the source entity's answer, the source may use another
    template; attribute swaps: the queried attribute follows the source, others stay the base's."""
    names = list(select_entities(city, TINY_TOY_CONFIG))
    tokenizer = build_word_tokenizer(
        _vocabulary_texts(city, TINY_TOY_CONFIG, names), _MAX_POSITIONS
    )
    corpus = _Corpus(city, TINY_TOY_CONFIG, names, tokenizer)
    n, templates = len(names), set(map(tuple, corpus.templates))
    row_of = {tuple(s): i for i, s in enumerate(corpus.templates)}
    kinds = {"full same template": 0, "full other template": 0, "cause": 0, "isolate": 0}
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        seqs, pairs = corpus.batch(32, generator)
        for b, s, base_pos, source_pos, subspace in pairs:
            base, source = seqs[b], seqs[s]
            assert tuple(source) in templates
            source_entity = corpus.entity_id.index(source[source_pos])
            base_entity = corpus.entity_id.index(base[base_pos])
            assert base_entity != source_entity
            as_source = tuple([*base[:base_pos], source[source_pos], *base[base_pos + 1 :]])
            if subspace == 0:  # the base continues like the source entity in the base's template
                assert as_source in templates
                same = as_source == tuple(source)
                kinds["full same template" if same else "full other template"] += 1
            else:
                template = row_of[tuple(source)] // n
                assert base_pos == source_pos == corpus.entity_pos[template]
                if subspace - 1 == corpus.template_attribute[template]:  # cause
                    assert as_source == tuple(source)
                    kinds["cause"] += 1
                else:  # isolate: the base's own text
                    assert tuple(base) == tuple(corpus.templates[template * n + base_entity])
                    kinds["isolate"] += 1
    assert all(count > 10 for count in kinds.values()), kinds
