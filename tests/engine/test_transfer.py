"""Host-to-device copies, and the engine on a CUDA device (those tests run only where one is)."""

import pytest
import torch

from helpers import ENTITIES, tiny_model, word_tokenizer
from ravel_bench.engine.interchange import intervened_generate, source_vectors
from ravel_bench.engine.transfer import batch_to_device, to_device
from ravel_bench.featurizers import random_subspace

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TEMPLATES = ["%s is a city in the country of", "The city %s is in"]


def test_a_tensor_already_on_the_device_is_returned_as_it_is():
    tensor = torch.arange(6).reshape(2, 3)
    assert to_device(tensor, torch.device("cpu")) is tensor
    batch = batch_to_device({"input_ids": tensor, "attention_mask": tensor > 0}, tensor.device)
    assert batch["input_ids"] is tensor and batch["attention_mask"].dtype == torch.bool


@needs_cuda
def test_a_copy_to_cuda_has_the_same_values_and_dtype():
    device = torch.device("cuda")
    for tensor in (torch.arange(7), torch.randn(3, 5), torch.tensor([True, False])):
        copied = to_device(tensor, device)
        assert copied.device.type == "cuda" and copied.dtype == tensor.dtype
        assert torch.equal(copied.cpu(), tensor)


@needs_cuda
def test_intervened_generation_on_cuda_matches_the_cpu():
    """Same weights, float32: the same tokens on both devices, returned on the CPU."""
    model = tiny_model("llama", n_layers=3)
    tokenizer = word_tokenizer()
    n = 12
    templates = [TEMPLATES[i % 2] for i in range(n)]
    bases = [ENTITIES[i % 8] for i in range(n)]
    sources = [ENTITIES[(i * 3 + 1) % 8] for i in range(n)]
    featurizer = random_subspace(32, 4, seed=1)
    runs = []
    for device in ("cpu", "cuda"):
        model.to(device)
        featurizer.to(device)
        source = source_vectors(model, tokenizer, templates[::-1], sources, 1, batch_size=5)
        assert source.device.type == device
        generated = intervened_generate(
            model, tokenizer, templates, bases, 1, featurizer.intervene, source, batch_size=5
        )
        assert generated.device.type == "cpu"
        runs.append(generated.tolist())
    assert runs[0] == runs[1]
