"""Greedy generation under left padding, intervened logits against a hand-written computation,
and batch-size invariance of intervened generation."""

import pytest
import torch

from helpers import ENTITIES, tiny_model, word_tokenizer
from ravel_bench.engine.blocks import EMBEDDINGS
from ravel_bench.engine.generation import greedy_generate
from ravel_bench.engine.hooks import patch_first_pass
from ravel_bench.engine.interchange import intervened_generate, source_vectors
from ravel_bench.engine.positions import encode_with_entity_positions
from ravel_bench.featurizers import IdentityFeaturizer, random_subspace

TEMPLATES = ["%s is a city in the country of", "The city %s is in", '{"city": "%s", "country": "']


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_left_padded_batch_generates_like_single_prompts(arch):
    model = tiny_model(arch, n_layers=2)
    tokenizer = word_tokenizer()
    batch, _ = encode_with_entity_positions(tokenizer, TEMPLATES, ENTITIES[:3])
    batched = greedy_generate(model, batch, 4)
    for i, (template, entity) in enumerate(zip(TEMPLATES, ENTITIES, strict=False)):
        single = tokenizer(template % entity, return_tensors="pt")
        ours = greedy_generate(model, dict(single), 4)
        reference = model.generate(
            **single, max_new_tokens=4, do_sample=False, pad_token_id=0, min_new_tokens=4
        )[:, single["input_ids"].shape[1] :]
        assert ours.tolist() == reference.tolist()
        assert batched[i].tolist() == ours[0].tolist()


def test_intervened_logits_match_a_hand_written_computation():
    """Patch after block 0 of a 3-block Llama, then run blocks 1-2, the norm and the head by hand."""
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    ids = tokenizer("Rome is a city in the country of", return_tensors="pt")["input_ids"]
    position, new_vector = 0, torch.randn(32)

    with patch_first_pass(model, 0, torch.tensor([position]), lambda base: new_vector[None]):
        with torch.no_grad():
            patched_logits = model(ids).logits

    inner = model.model
    with torch.no_grad():
        hidden = inner.embed_tokens(ids)
        position_ids = torch.arange(ids.shape[1])[None]
        rotary = inner.rotary_emb(hidden, position_ids=position_ids)
        hidden = inner.layers[0](
            hidden, attention_mask=None, position_embeddings=rotary, position_ids=position_ids
        )
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = hidden.clone()
        hidden[0, position] = new_vector
        for block in inner.layers[1:]:
            hidden = block(
                hidden, attention_mask=None, position_embeddings=rotary, position_ids=position_ids
            )
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        manual_logits = model.lm_head(inner.norm(hidden))
        plain_logits = model(ids).logits
    torch.testing.assert_close(patched_logits, manual_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patched_logits, plain_logits)  # the edit mattered
    # Tokens before the patched position are untouched (causal attention).
    torch.testing.assert_close(patched_logits[0, :position], plain_logits[0, :position])


def test_full_swap_at_embeddings_equals_running_the_source_entity():
    model = tiny_model("llama", n_layers=2)
    tokenizer = word_tokenizer()
    base_entities, source_entities = ENTITIES[:3], ENTITIES[3:6]
    source = source_vectors(model, tokenizer, TEMPLATES, source_entities, EMBEDDINGS)
    full = IdentityFeaturizer.full(32)
    swapped = intervened_generate(
        model,
        tokenizer,
        TEMPLATES,
        base_entities,
        EMBEDDINGS,
        full.intervene,
        source,
        max_new_tokens=3,
    )
    direct = intervened_generate(model, tokenizer, TEMPLATES, source_entities, EMBEDDINGS, None)
    assert swapped.tolist() == direct.tolist()


def test_batch_size_does_not_change_predictions():
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    n = 10
    templates = [TEMPLATES[i % 3] for i in range(n)]
    bases = [ENTITIES[i % 8] for i in range(n)]
    sources = [ENTITIES[(i * 3 + 1) % 8] for i in range(n)]
    featurizer = random_subspace(32, 4, seed=1)
    runs = []
    for batch_size in (1, 3, 64):
        source = source_vectors(
            model, tokenizer, templates[::-1], sources, 1, batch_size=batch_size
        )
        runs.append(
            intervened_generate(
                model,
                tokenizer,
                templates,
                bases,
                1,
                featurizer.intervene,
                source,
                batch_size=batch_size,
            ).tolist()
        )
    assert runs[0] == runs[1] == runs[2]


def test_source_vectors_are_computed_once_per_distinct_prompt():
    model = tiny_model("llama", n_layers=2)
    tokenizer = word_tokenizer()
    calls = []
    handle = model.model.embed_tokens.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0])
    )
    try:
        vectors = source_vectors(
            model, tokenizer, [TEMPLATES[0]] * 5 + [TEMPLATES[1]], ["Rome"] * 5 + ["Lima"], 0
        )
    finally:
        handle.remove()
    assert sum(calls) == 2  # two distinct prompts
    assert vectors.shape == (6, 32)
    torch.testing.assert_close(vectors[0], vectors[4])
