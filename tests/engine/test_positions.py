"""The entity's last token comes from offsets, with left padding, for word-level and BPE tokenizers."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers import word_tokenizer
from ravel_bench.engine.positions import (
    encode_rows,
    encode_with_entity_positions,
    entity_char_span,
)
from ravel_bench.errors import DataFormatError


def test_word_level_positions_with_left_padding():
    tokenizer = word_tokenizer()
    templates = ['{"city": "%s", "country": "', "%s is a city in the country of", "The city %s"]
    entities = ["Paris", "Tokyo", "Rome"]
    batch, positions = encode_with_entity_positions(tokenizer, templates, entities)
    ids = batch["input_ids"]
    for i, entity in enumerate(entities):
        assert tokenizer.convert_ids_to_tokens(int(ids[i, positions[i]])) == entity
    assert batch["attention_mask"][2, 0] == 0  # the shortest row is left-padded


def test_entity_char_span_with_escaped_percent():
    assert entity_char_span("100%% of %s is", "Rome") == (8, 12)
    assert ("100%% of %s is" % "Rome")[8:12] == "Rome"  # noqa: UP031 - templates use %


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(["the city is in the country of"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")


def test_bpe_multi_token_entity_uses_its_last_subtoken():
    tokenizer = _bpe_tokenizer()
    template, entity = " the city %s is in the country of", "Zyxwvut"
    batch, positions = encode_with_entity_positions(tokenizer, [template, " %s"], [entity, "Qq"])
    prompt = template % entity
    start, end = entity_char_span(template, entity)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    covering = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    assert len(covering) > 1  # the unseen entity is split into several sub-tokens
    pad = int((batch["attention_mask"][0] == 0).sum())
    assert int(positions[0]) - pad == covering[-1]
    assert offsets[covering[-1]][1] == end


def test_entity_that_no_token_covers_is_an_error():
    tokenizer = word_tokenizer()
    with pytest.raises(DataFormatError, match="cannot locate entity '' in prompt"):
        encode_with_entity_positions(tokenizer, ["%s is a city"], [""])


def _bos_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE that adds ``<s>`` in front, as Llama's does."""
    from tokenizers import processors

    tokenizer = _bpe_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return tokenizer


@pytest.mark.parametrize("make", [word_tokenizer, _bpe_tokenizer, _bos_bpe_tokenizer])
@pytest.mark.parametrize("left_state", ["none", "padded", "truncated"])
def test_encode_rows_equals_the_tokenizers_own_call(make, left_state):
    """encode_rows asks the Rust backend directly: the ids and entity tokens must be exactly the
    tokenizer's, also when an earlier padded or truncated call left the backend configured."""
    tokenizer = make()
    templates = [" the city %s is in the country of", '{"city": "%s", "country": "', " %s"]
    entities = ["Paris", "Zyxwvut", "Rome"]
    if left_state == "padded":
        tokenizer(["the city", "of"], padding=True)
        assert tokenizer.backend_tokenizer.padding is not None
    elif left_state == "truncated":
        tokenizer(["the city is in the country of"], truncation=True, max_length=2)
        assert tokenizer.backend_tokenizer.truncation is not None
    rows = encode_rows(tokenizer, templates, entities, chunk_size=2)
    for i, (template, entity) in enumerate(zip(templates, entities, strict=True)):
        enc = tokenizer(template % entity, return_offsets_mapping=True)
        start, end = entity_char_span(template, entity)
        covering = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start]
        assert rows.ids[i] == enc["input_ids"]
        assert (rows.first[i], rows.last[i]) == (covering[0], covering[-1])
    if make is _bos_bpe_tokenizer:
        assert all(ids[0] == tokenizer.bos_token_id for ids in rows.ids)
