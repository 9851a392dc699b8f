"""Shared-prefix KV caching and source truncation give what the full prompts give."""

import pytest
import torch

from helpers import tiny_model, word_tokenizer
from ravel_bench.engine.blocks import EMBEDDINGS
from ravel_bench.engine.generation import greedy_generate, position_ids_from_mask
from ravel_bench.engine.hooks import patch_first_pass, residual_at_positions
from ravel_bench.engine.interchange import intervened_generate, source_vectors
from ravel_bench.engine.positions import encode_with_entity_positions, encode_with_entity_span
from ravel_bench.engine.prefix import build_prefix_table, rest_inputs, split_before
from ravel_bench.training import Example, _counterfactual_loss, teacher_forced_batch

# Two rows share "The city", one has no prefix (the word tokenizer adds no BOS), one has its own.
TEMPLATES = ["The city %s is in", "The city %s is in the", "%s is a city in", "the %s city is"]
ENTITIES = ["Paris", "Tokyo", "Rome", "Lima"]
# Rows for the interchange functions: shared and unshared prefixes, repeats, several lengths.
MIXED_TEMPLATES = [TEMPLATES[i % 4] for i in range(11)] + ["The country of %s is"]
MIXED_ENTITIES = [["Paris", "Tokyo", "Rome", "Lima", "Oslo"][i % 5] for i in range(12)]


def _encoded():
    return encode_with_entity_span(word_tokenizer(), TEMPLATES, ENTITIES)


def _table(model, batch, first, layer=None):
    split = split_before(batch, first)
    table = build_prefix_table(model, split.keys, max_rows=8, layer=layer, min_count=1)
    return split, table


def test_split_keeps_each_rows_tokens():
    batch, first, last, _ = _encoded()
    split = split_before(batch, first)
    assert split.keys[0] == split.keys[1] and split.keys[2] == () and len(split.keys[3]) == 1
    mask = torch.ones(4, 0, dtype=torch.long)  # no cached token: positions restart at the rest
    for row in range(4):
        real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        rest = split.rest["input_ids"][row][split.rest["attention_mask"][row].bool()].tolist()
        assert list(split.keys[row]) + rest == real
    assert (last - split.shift >= 0).all()
    # Only known prefixes are cut: the others stay whole, in the rest.
    known = split_before(batch, first, known={split.keys[0]})
    assert known.keys == (split.keys[0], split.keys[0], (), ())
    assert rest_inputs(split.rest, mask)["position_ids"].shape == split.rest["input_ids"].shape


def test_no_split_and_no_table_without_a_shared_prefix():
    tokenizer = word_tokenizer()
    batch, first, _, _ = encode_with_entity_span(
        tokenizer, ["%s is", "%s is a city"], ["Rome", "Lima"]
    )
    assert split_before(batch, first) is None
    assert build_prefix_table(tiny_model("llama"), [(5, 6), (7,), ()], max_rows=8) is None


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_cached_prefix_generation_equals_full_prompts(arch):
    model = tiny_model(arch, n_layers=2)
    batch, first, last, _ = _encoded()
    split, table = _table(model, batch, first)
    new = torch.randn(len(TEMPLATES), 32)
    full = greedy_generate(model, batch, 4)
    cache, prefix_mask = table.select(split.keys)
    cached = greedy_generate(model, rest_inputs(split.rest, prefix_mask), 4, cache=cache)
    assert cached.tolist() == full.tolist()
    with patch_first_pass(model, 0, last, lambda base: new):
        full = greedy_generate(model, batch, 4)
    cache, prefix_mask = table.select(split.keys)  # the table is unchanged by the first use
    with patch_first_pass(model, 0, last - split.shift, lambda base: new):
        cached = greedy_generate(model, rest_inputs(split.rest, prefix_mask), 4, cache=cache)
    assert cached.tolist() == full.tolist()


def test_cached_prefix_source_vectors_equal_full_runs():
    model = tiny_model("llama", n_layers=3)
    batch, first, last, _ = _encoded()
    full = residual_at_positions(
        model, 1, batch, last, position_ids_from_mask(batch["attention_mask"])
    )
    split, table = _table(model, batch, first, layer=1)
    cache, prefix_mask = table.select(split.keys)
    inputs = rest_inputs(split.rest, prefix_mask)
    cached = residual_at_positions(
        model,
        1,
        {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
        last - split.shift,
        inputs["position_ids"],
        cache=cache,
    )
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [EMBEDDINGS, 0, 1])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_source_vectors_equal_one_prompt_at_a_time(layer, batch_size):
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    vectors = source_vectors(
        model, tokenizer, MIXED_TEMPLATES, MIXED_ENTITIES, layer, batch_size=batch_size
    )
    for row, (template, entity) in enumerate(zip(MIXED_TEMPLATES, MIXED_ENTITIES, strict=True)):
        batch, position = encode_with_entity_positions(tokenizer, [template], [entity])
        alone = residual_at_positions(
            model, layer, batch, position, position_ids_from_mask(batch["attention_mask"])
        )
        torch.testing.assert_close(vectors[row], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_intervened_generation_equals_one_prompt_at_a_time(batch_size):
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    source = torch.randn(len(MIXED_TEMPLATES), 32)

    def swap(base, src):
        return src

    generated = intervened_generate(
        model,
        tokenizer,
        MIXED_TEMPLATES,
        MIXED_ENTITIES,
        1,
        swap,
        source,
        max_new_tokens=3,
        batch_size=batch_size,
    )
    for row, (template, entity) in enumerate(zip(MIXED_TEMPLATES, MIXED_ENTITIES, strict=True)):
        batch, position = encode_with_entity_positions(tokenizer, [template], [entity])
        with patch_first_pass(model, 1, position, lambda base, row=row: source[row : row + 1]):
            alone = greedy_generate(model, batch, 3)
        assert generated[row].tolist() == alone[0].tolist()


def test_counterfactual_loss_and_gradient_are_the_same_with_a_cached_prefix():
    model = tiny_model("llama", n_layers=3).requires_grad_(False)
    tokenizer = word_tokenizer()
    examples = [
        Example(t, e, t, "Oslo", " France", "cause")
        for t, e in zip(TEMPLATES, ENTITIES, strict=True)
    ]
    batch, positions, label_mask, starts = teacher_forced_batch(
        tokenizer, examples, return_starts=True
    )
    keys = split_before(batch, starts).keys
    full_table = build_prefix_table(model, keys, max_rows=4, min_count=1)
    # Rows whose prefix a table lacks run whole, beside the cut rows of the same batch.
    partial_table = build_prefix_table(model, [keys[0]] * 2, max_rows=4)
    direction = torch.randn(2, 32, requires_grad=True)
    source = torch.randn(len(examples), 32)

    def loss_and_grad(**kwargs):
        def edit(base):
            return base + ((source - base) @ direction.T) @ direction

        loss = _counterfactual_loss(model, batch, positions, label_mask, 1, edit, **kwargs)
        (grad,) = torch.autograd.grad(loss, direction)
        return loss.detach(), grad

    full_loss, full_grad = loss_and_grad()
    for table in (None, full_table, partial_table):
        loss, grad = loss_and_grad(starts=starts, table=table)
        torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, full_grad, atol=1e-5, rtol=1e-4)


@pytest.fixture
def no_mask_check(monkeypatch):
    """transformers' own read of the padding mask (``_ignore_causal_mask_sdpa``, which decides
    whether the mask can be skipped) answers "no" without reading: the meta-device tests below
    then catch any other read of a device value, which would make the host wait for a GPU."""
    import transformers.masking_utils

    monkeypatch.setattr(
        transformers.masking_utils, "_ignore_causal_mask_sdpa", lambda *args, **kwargs: False
    )


def test_counterfactual_loss_reads_no_value_of_a_device_tensor(no_mask_check):
    """A training step queues its work without waiting for the device: the prefix cut, the
    logits to keep and the label positions are decided from the host tensors. On the meta
    device any read of a value (``.tolist()``, ``.item()``, boolean indexing) raises."""
    model = tiny_model("llama", n_layers=3).requires_grad_(False).to("meta")
    examples = [
        Example(t, e, t, "Oslo", " France", "cause")
        for t, e in zip(TEMPLATES, ENTITIES, strict=True)
    ]
    batch, positions, label_mask, starts = teacher_forced_batch(
        word_tokenizer(), examples, return_starts=True
    )
    table = build_prefix_table(model, split_before(batch, starts).keys, max_rows=4, min_count=1)
    direction = torch.zeros(2, 32, device="meta", requires_grad=True)
    source = torch.zeros(len(examples), 32, device="meta")

    def edit(base):
        return base + ((source - base) @ direction.T) @ direction

    for kwargs in ({}, {"starts": starts, "table": table}):
        loss = _counterfactual_loss(model, batch, positions, label_mask, 1, edit, **kwargs)
        loss.backward()
        assert loss.device.type == "meta" and loss.shape == ()


def test_source_vectors_and_generation_read_no_value_of_a_device_tensor(no_mask_check):
    """The eval loop queues its batches without waiting for the device (see the training
    test above): on the meta device any read of a value raises."""
    model = tiny_model("llama", n_layers=3).requires_grad_(False).to("meta")
    tokenizer = word_tokenizer()
    source = source_vectors(
        model, tokenizer, MIXED_TEMPLATES, MIXED_ENTITIES, 1, batch_size=4, show_progress=False
    )
    assert source.device.type == "meta" and source.shape == (12, 32)
    tokens = intervened_generate(
        model,
        tokenizer,
        MIXED_TEMPLATES,
        MIXED_ENTITIES[::-1],
        1,
        lambda base, src: base + 0.5 * (src - base),
        source,
        batch_size=4,
        show_progress=False,
        keep_on_device=True,
    )
    assert tokens.device.type == "meta" and tokens.shape == (12, 3)


def test_windows_group_consecutive_batches_under_both_caps():
    from ravel_bench.engine.interchange import table_windows

    keys = [(1,), (1,), (2,), (2,), (3,), (3,), (4,), (4,), (), ()]
    cut = [True] * 8 + [False] * 2
    batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert table_windows(batches, keys, cut, max_prefixes=8, window_batches=2) == [
        [0, 1],
        [2, 3],
        [4],  # whole rows never share a window with cut ones
    ]
    assert table_windows(batches, keys, cut, max_prefixes=3, window_batches=8) == [
        [0, 1, 2],
        [3],
        [4],
    ]


def test_each_window_builds_a_table_of_its_own_prefixes_after_freeing_the_last(monkeypatch):
    """Peak memory: one small table at a time, not one of every prefix."""
    import gc
    import weakref

    import ravel_bench.engine.interchange as interchange

    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    built = []
    real = interchange.build_prefix_table

    def recording(model, keys, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in built)  # the previous window's table is gone
        table = real(model, keys, **kwargs)
        built.append(weakref.ref(table))
        prefixes.append(set(table.rows))
        return table

    prefixes = []
    monkeypatch.setattr(interchange, "build_prefix_table", recording)
    monkeypatch.setattr(interchange, "WINDOW_BATCHES", 1)
    templates = ["The city %s is in", "The city of %s is", "the %s city is"] * 4
    entities = ["Paris", "Tokyo", "Rome", "Lima"] * 3
    generated = intervened_generate(
        model, tokenizer, templates, entities, 1, None, max_new_tokens=2, batch_size=4
    )
    assert len(built) == 3 and all(len(p) == 1 for p in prefixes)  # one prefix per batch
    monkeypatch.setattr(interchange, "build_prefix_table", real)
    monkeypatch.setattr(interchange, "WINDOW_BATCHES", 100)
    one_table = intervened_generate(
        model, tokenizer, templates, entities, 1, None, max_new_tokens=2, batch_size=4
    )
    assert torch.equal(generated, one_table)
