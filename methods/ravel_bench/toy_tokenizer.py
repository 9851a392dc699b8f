"""The word-level tokenizer of the embedded toy model (DESIGN.md section 8).

One token per word and one per run of punctuation, so that every RAVEL entity made of a single
``\\w+`` word is exactly one token in every template (``"city": "%s"``, ``%s's``). With a subword
vocabulary the entity's last position reads the entity's pieces in block 0 and interventions
there after block 0 change nothing; a word vocabulary keeps the whole entity at one position.

The tokenizer is a ``tokenizers`` ``WordLevel`` model behind the ``Whitespace`` pre-tokenizer
(``\\w+|[^\\w\\s]+``), wrapped in :class:`transformers.PreTrainedTokenizerFast`. It prepends
``<s>``, pads on the left, and reports exact character offsets. Decoding joins tokens with single
spaces (``"Paris , France"``): the original spacing is not kept.
"""

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
# Llama's order for the first three; the pad token comes last.
SPECIAL_TOKENS: tuple[str, ...] = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
# The same split as tokenizers' ``Whitespace`` pre-tokenizer.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Split ``text`` into the pieces the tokenizer maps to one token each.

    Example:
        >>> split_words('{"city": "Paris", "country": "')
        ['{"', 'city', '":', '"', 'Paris', '",', '"', 'country', '":', '"']
    """
    return WORD_PATTERN.findall(text)


def build_word_tokenizer(texts: Iterable[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer whose vocabulary is every piece of ``texts``.

    Args:
        texts: the texts that define the vocabulary; ``%s`` placeholders are ignored.
        model_max_length: the longest input the model accepts, in tokens.

    Returns:
        A tokenizer with ``<unk> <s> </s> <pad>`` as ids 0-3, then the pieces in sorted order
        (so the same texts always give the same ids). It prepends ``<s>`` and pads on the left.

    Example:
        >>> tok = build_word_tokenizer(["%s's mayor", '"city": "%s"'], model_max_length=16)
        >>> tok.convert_ids_to_tokens(tok("Rome's mayor")["input_ids"])
        ['<s>', '<unk>', "'", 's', 'mayor']
    """
    pieces = sorted({p for text in texts for p in split_words(text.replace("%s", " "))})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos_id = vocab[BOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
