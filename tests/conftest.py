"""Shared fixtures: the official release from ../shared, seeding, and a built dataset folder."""

import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ravel_bench.data import load_release
from ravel_bench.instance.build import InstanceConfig, build_instance
from ravel_bench.toy_tokenizer import build_word_tokenizer

RELEASE_TGZ = Path(__file__).resolve().parents[1].parent / "shared" / "ravel" / "data.tgz"


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run faster on one thread; two threads oversubscribe a 2-core machine."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep downloads and the datasets cache out of the user's home."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("RAVEL_BENCH_CACHE", str(cache / "ravel_bench"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def release_tgz() -> Path:
    if not RELEASE_TGZ.is_file():
        pytest.fail(f"the RAVEL release is expected at {RELEASE_TGZ} (../shared/ravel/data.tgz)")
    return RELEASE_TGZ


@pytest.fixture(scope="session")
def extracted_release(release_tgz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release's 25 JSON files, extracted once per session (read-only for tests)."""
    out = tmp_path_factory.mktemp("release")
    with tarfile.open(release_tgz) as archive:
        archive.extractall(out, filter="data")
    return out / "data"


@pytest.fixture
def release_dir(extracted_release: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the release folder."""
    return Path(shutil.copytree(extracted_release, tmp_path / "release"))


ATTRIBUTES = ("Country", "Continent")


@pytest.fixture(scope="session")
def city(release_tgz):
    return load_release(release_tgz, ("city",)).types["city"]


@pytest.fixture(scope="session")
def tiny_city(city):
    by_split: dict[str, list[str]] = {}
    for entity, split in city.entity_split.items():
        if entity.isalpha() and len(by_split.setdefault(split, [])) < 5:
            by_split[split].append(entity)
    entities = tuple(e for es in by_split.values() for e in es)
    templates = [t for a in ATTRIBUTES for t in city.attribute_templates[a]]
    values = [city.entity_attributes[e][a] for e in entities for a in ATTRIBUTES]
    tokenizer = build_word_tokenizer([*templates, *entities, *values], model_max_length=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    config = InstanceConfig(
        attributes=ATTRIBUTES,
        entities=entities,
        templates_per_split=(2, 1, 1),
        min_template_accuracy=0.0,
        require_correct=False,
    )
    instance = build_instance(
        model, tokenizer, city, config, model_id="tiny-random", show_progress=False
    )
    return model, tokenizer, instance, config


@pytest.fixture(scope="session")
def built_dataset(release_tgz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset repo folder built once from the release."""
    from ravel_bench import build_dataset_folder

    out = tmp_path_factory.mktemp("dataset") / "ravel"
    build_dataset_folder(release_tgz, out)
    return out
