"""Factories for tests: tiny random causal LMs and a word-level tokenizer (nothing downloaded)."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = (
    "Paris Tokyo Rome Lima Oslo Cairo Delhi Quito is a city in the country of continent "
    "language spoken : , . \" ' ( ) { } France Japan Italy Peru Norway Egypt India Ecuador "
    "Europe Asia Africa America French Japanese Italian Spanish Norwegian Arabic Hindi "
    "city_name country_name the The people live on and"
).split()
ENTITIES = ["Paris", "Tokyo", "Rome", "Lima", "Oslo", "Cairo", "Delhi", "Quito"]


def word_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: one token per word or punctuation mark."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    return tokenizer


def tiny_config(arch: str, vocab_size: int, n_layers: int = 2, d_model: int = 32):
    """A tiny config of the given architecture family."""
    common = {"vocab_size": vocab_size, "num_hidden_layers": n_layers}
    if arch == "llama":
        return LlamaConfig(
            hidden_size=d_model,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
    if arch == "mistral":
        return MistralConfig(
            hidden_size=d_model,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
    if arch == "gemma":
        return GemmaConfig(
            hidden_size=d_model,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            **common,
        )
    if arch == "qwen2":
        return Qwen2Config(
            hidden_size=d_model,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            vocab_size=vocab_size,
            bos_token_id=2,
            eos_token_id=3,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=d_model, intermediate_size=64, num_attention_heads=4, **common
        )
    raise ValueError(arch)


ARCHITECTURES = ("llama", "mistral", "gemma", "qwen2", "gpt2", "gpt_neox")


def tiny_model(arch: str = "llama", vocab_size: int = len(WORDS) + 4, seed: int = 0, **kw):
    """A tiny random causal LM in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, **kw))
    return model.eval()
