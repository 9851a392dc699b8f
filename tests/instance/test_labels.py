"""Labels re-tokenize into what the model generated, and "Other" contexts query no attribute."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ravel_bench.data import load_release
from ravel_bench.instance.build import label_token_ids, labels_in_context

JSON_PROMPT = '{"city": "Paris", "country": "'
PROSE_PROMPT = "Paris is a city in the country of"


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE, in which " France" and "France" are different tokens."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [JSON_PROMPT + 'France"}', PROSE_PROMPT + " France.", "France"] * 50
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")


def _generated(tokenizer, prompt: str, text: str) -> list[int]:
    """The tokens a model writes after ``prompt`` to produce ``text`` (tokenized in context)."""
    return label_token_ids(tokenizer, [prompt], [text], n=8)[0]


def test_label_keeps_the_space_the_model_wrote_and_only_that(bpe):
    assert (
        bpe(" France", add_special_tokens=False)["input_ids"]
        != bpe("France", add_special_tokens=False)["input_ids"]
    )
    prompts = [JSON_PROMPT, PROSE_PROMPT]
    generated = [
        _generated(bpe, JSON_PROMPT, 'France"}'),
        _generated(bpe, PROSE_PROMPT, " France."),
    ]
    outputs = [bpe.decode(g) for g in generated]
    assert outputs == ['France"}', " France."]
    labels, keys = labels_in_context(bpe, prompts, outputs, generated, n=3)
    # After the JSON quote the model wrote no space: " France" would be other tokens.
    assert labels == ["France", " France"]
    for key, gen in zip(keys, generated, strict=True):
        assert key and gen[: len(key)] == key


def test_label_that_matches_in_neither_form_keeps_the_space(bpe):
    other = _generated(bpe, PROSE_PROMPT, " Paris")
    labels, keys = labels_in_context(bpe, [PROSE_PROMPT], ["France"], [other], n=3)
    assert labels == [" France"]
    assert other[: len(keys[0])] != keys[0]  # the instance will not use this cell


def test_other_contexts_leave_out_every_attribute_template(release_tgz):
    nobel = load_release(release_tgz, ("nobel_prize_winner",)).types["nobel_prize_winner"]
    both = set(nobel.wikipedia) & set(nobel.template_split)
    assert len(both) == 15  # the release's defect
    contexts = nobel.other_contexts()
    assert not set(contexts) & both
    assert set(contexts) == set(nobel.wikipedia) - both
    assert all(contexts[t] == nobel.wikipedia[t] for t in contexts)
