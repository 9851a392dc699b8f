"""Decoder blocks of every supported architecture, layer parsing, hooks on tensor and tuple outputs."""

import pytest
import torch
from torch import nn

from helpers import ARCHITECTURES, ENTITIES, tiny_model, word_tokenizer
from ravel_bench.engine.blocks import EMBEDDINGS, decoder_blocks, parse_layer, parse_layers
from ravel_bench.engine.hooks import patch_first_pass, residual_at_positions, residual_hook
from ravel_bench.engine.positions import encode_with_entity_positions
from ravel_bench.errors import ConfigError, IncompatibleModelError


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_blocks_found_and_hooked_for_every_architecture(arch):
    model = tiny_model(arch, n_layers=3)
    blocks = decoder_blocks(model)
    assert len(blocks) == 3
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
    n_hooks = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks]
    for layer in (EMBEDDINGS, 0, 2):
        seen = []
        with (
            residual_hook(model, layer, lambda h, seen=seen: seen.append(h.clone())),
            torch.no_grad(),
        ):
            model(ids)
        # hidden_states[0] is the embeddings stream; [L + 1] the output of block L (the last
        # one is after the final norm in most architectures, so compare blocks before it).
        if layer < 2:
            torch.testing.assert_close(seen[0], reference[layer + 1], rtol=0, atol=0)
    assert [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks] == n_hooks


def test_unknown_layout_is_a_clear_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 5})()
            self.stack = nn.Sequential(nn.Linear(2, 2))

    with pytest.raises(IncompatibleModelError, match="cannot find the decoder blocks of Odd"):
        decoder_blocks(Odd())


class TupleBlock(nn.Module):
    """A block in the transformers < 5 style: returns (hidden, extra)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, d)

    def forward(self, hidden_states, **kwargs):
        return (hidden_states + self.linear(hidden_states), None)


class TupleModel(nn.Module):
    def __init__(self, d: int = 8, n: int = 2) -> None:
        super().__init__()
        self.config = type("C", (), {"num_hidden_layers": n, "hidden_size": d})()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(TupleBlock(d) for _ in range(n))

    def forward(self, x):
        for block in self.model.layers:
            x = block(x)[0]
        return x


def test_hooks_accept_tuple_outputs():
    model = TupleModel()
    x = torch.randn(2, 3, 8)
    zero = torch.zeros(2, 8)
    with patch_first_pass(model, 0, torch.tensor([1, 2]), lambda base: zero):
        patched = model(x)
    unpatched_h0 = x + model.model.layers[0].linear(x)
    expected_h0 = unpatched_h0.clone()
    expected_h0[0, 1] = 0
    expected_h0[1, 2] = 0
    expected = expected_h0 + model.model.layers[1].linear(expected_h0)
    torch.testing.assert_close(patched, expected)
    torch.testing.assert_close(model(x), unpatched_h0 + model.model.layers[1].linear(unpatched_h0))


def test_hook_rejects_a_wrong_shape():
    model = TupleModel(d=8)
    model.config.hidden_size = 16
    with pytest.raises(
        IncompatibleModelError,
        match=r"blocks.0.resid_post: expected a residual "
        r"stream of shape \(batch, pos, 16\), found \(2, 3, 8\)",
    ):
        with residual_hook(model, 0, lambda h: None):
            model(torch.randn(2, 3, 8))


def test_parse_layer():
    assert parse_layer("embeddings", 4) == EMBEDDINGS
    assert parse_layer("3", 4) == 3
    assert parse_layers("all", 3) == [EMBEDDINGS, 0, 1, 2]
    assert parse_layers("embeddings,1", 3) == [EMBEDDINGS, 1]
    with pytest.raises(
        ConfigError, match=r"layer 4 is out of range: this model has 4 blocks \(0..3\)"
    ):
        parse_layer("4", 4)
    with pytest.raises(ConfigError, match="'middle' is not 'embeddings' or a block index 0..3"):
        parse_layer("middle", 4)


def test_source_run_stops_at_the_layer():
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    batch, positions = encode_with_entity_positions(
        tokenizer, ["%s is a city in", "The city %s is in"], ["Paris", "Tokyo"]
    )
    calls = []
    handle = decoder_blocks(model)[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        from ravel_bench.engine.generation import position_ids_from_mask

        vectors = residual_at_positions(
            model, 1, batch, positions, position_ids_from_mask(batch["attention_mask"])
        )
    finally:
        handle.remove()
    assert calls == []  # block 2 never ran
    assert vectors.shape == (2, 32)
    # Same as reading the full run's hidden states, row by row and unpadded.
    for i, (template, entity) in enumerate(
        [("%s is a city in", "Paris"), ("The city %s is in", "Tokyo")]
    ):
        ids = tokenizer(template % entity, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[2]
        pos = int(positions[i]) - int((batch["attention_mask"][i] == 0).sum())
        torch.testing.assert_close(vectors[i], hidden[0, pos], atol=1e-5, rtol=1e-5)
    assert ENTITIES
