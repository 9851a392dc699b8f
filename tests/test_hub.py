"""Featurizer repos (save, strict load, base model checks, offline loading by repo id), the cards
ravel-bench renders, and ``push`` for every artifact kind against a stub Hub API."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard, SpaceCard
from safetensors.torch import save_file

from helpers import ENTITIES, tiny_model, word_tokenizer
from ravel_bench.engine.generation import forward_kwargs
from ravel_bench.engine.interchange import intervened_generate
from ravel_bench.errors import (
    ConfigError,
    DataFormatError,
    IncompatibleModelError,
    SourceUnavailableError,
)
from ravel_bench.featurizers import IdentityFeaturizer, parse_featurizer_spec
from ravel_bench.hub import (
    Intervenable,
    add_push_parser,
    cmd_push,
    load_featurizer,
    load_intervenable,
    push,
    save_featurizer,
    scores_from_results,
)
from ravel_bench.instance.build import RavelInstance
from ravel_bench.instance.pairs import SETTINGS
from ravel_bench.instance.repo import save_instance

METRIC_DIR = Path(__file__).resolve().parents[1] / "metric" / "ravel_disentangle"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_MODEL, N_LAYERS = 32, 2
SCORES = {
    "entity": {"test": {"cause": 0.25, "isolate": 0.75, "disentangle": 0.5, "n_pairs": 8}},
    "context": {"val": {"cause": None, "isolate": 1.0, "disentangle": None}},
}
TRAINING = {"instance": "org/ravel-city-toy", "steps": 200, "lr": 0.001, "layers": [0, 1]}
BASE_T = ["%s is a city in the country of", "The city %s is in", "%s is a city in"]
SOURCE_T = ["The city %s is in", "%s is a city in the country of", "%s is in"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP oversubscription on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 blocks, d_model 32) and its word tokenizer, saved to a folder."""
    folder = tmp_path_factory.mktemp("base") / "tiny-llama"
    tokenizer = word_tokenizer()
    tiny_model("llama", vocab_size=len(tokenizer), n_layers=N_LAYERS).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _featurizer(spec: str, base_model: str = "", **config):
    featurizer = parse_featurizer_spec(spec, D_MODEL, seed=3)
    cls = type(featurizer)
    fields = {"base_model": base_model, "n_layers": N_LAYERS, "layer": 0, "entity_type": "city"}
    fields.update(config)
    if spec.startswith("random"):
        return cls.from_directions(featurizer.directions, method="random", seed=3, **fields)
    return cls.from_mask(featurizer.mask, method=spec, **fields)


def _generate_args(n: int = 3) -> tuple[list[str], list[str], list[str], list[str]]:
    return BASE_T[:n], ENTITIES[:n], SOURCE_T[:n], ENTITIES[3 : 3 + n]


# ---------------------------------------------------------------------------------------------
# Save and strict load


@pytest.mark.parametrize("spec", ["noop", "full", "random:5"])
def test_save_load_round_trip(spec, tmp_path):
    featurizer = _featurizer(spec, base_model="org/base", attribute="Country")
    out = save_featurizer(featurizer, tmp_path / spec, scores=SCORES, training=TRAINING)
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
        "ravel_results.json",
    }
    loaded = load_featurizer(out)
    assert type(loaded) is type(featurizer) and loaded.config == featurizer.config
    assert not loaded.training
    for name, tensor in featurizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    h, s = torch.randn(4, D_MODEL), torch.randn(4, D_MODEL)
    assert torch.equal(loaded.intervene(h, s), featurizer.intervene(h, s))
    results = json.loads((out / "ravel_results.json").read_text())
    assert results["scores"] == SCORES and results["training"] == TRAINING
    assert results["featurizer"]["method"] == featurizer.config.method


def test_card_parses_and_is_rerendered_on_every_save(tmp_path):
    featurizer = _featurizer("random:4", base_model="org/base-lm", attribute="Country")
    out = save_featurizer(featurizer, tmp_path, scores=SCORES, training=TRAINING, repo_id="me/x")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/base-lm"
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "ravel-bench" and card.data.license == "mit"
    assert {"ravel", "featurizer", "random"} <= set(card.data.tags)
    assert "| entity | test | 0.250 | 0.750 | 0.500 |" in card.text
    assert "| context | val | n/a | 1.000 | n/a |" in card.text
    assert 'load_intervenable("me/x")' in card.text and "| steps | 200 |" in card.text
    assert "blocks.0.resid_post" in card.text and "[4, 32]" in card.text

    save_featurizer(featurizer, tmp_path)  # no scores now: the stale card must go
    text = (out / "README.md").read_text()
    assert "Not evaluated." in text and "0.250" not in text and "Not recorded." in text
    assert json.loads((out / "ravel_results.json").read_text())["scores"] == {}


def test_card_keeps_local_base_models_out_of_the_yaml(tmp_path, base_model_dir):
    out = save_featurizer(_featurizer("full", base_model=str(base_model_dir)), tmp_path)
    card = ModelCard.load(out / "README.md")
    assert "base_model" not in card.data.to_dict()
    assert "base_model_relation" not in card.data.to_dict()
    assert str(base_model_dir) in card.text and "not a Hub id" in card.text


def test_scores_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"missing isolate, disentangle"):
        save_featurizer(_featurizer("noop"), tmp_path, scores={"entity": {"test": {"cause": 1}}})
    with pytest.raises(ConfigError, match="finite number"):
        bad = {"entity": {"test": {"cause": float("nan"), "isolate": 1, "disentangle": 1}}}
        save_featurizer(_featurizer("noop"), tmp_path, scores=bad)
    with pytest.raises(ConfigError, match="finite JSON values only"):
        save_featurizer(_featurizer("noop"), tmp_path, training={"lr": torch.tensor(0.1)})
    assert not (tmp_path / "config.json").exists()  # nothing written


def _tamper_header(path: Path, old: str, new: str) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].decode().replace(old, new)
    path.write_bytes(raw[:8] + header.encode().ljust(n) + raw[8 + n :])


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "unreadable"),
        (lambda p: p.write_bytes(b"not a safetensors file at all"), "unreadable"),
        (lambda p: _tamper_header(p, "[4,32]", "[3,32]"), "unreadable"),
        (lambda p: _tamper_header(p, "[4,32]", "[8,16]"), r"should be \[4, 32\]"),
        (lambda p: save_file({"directions": torch.zeros(3, 32)}, p), r"found \[3, 32\]"),
        (
            lambda p: save_file({"directions": torch.zeros(4, 32, dtype=torch.float64)}, p),
            "found \\[4, 32\\] float64",
        ),
        (lambda p: save_file({"other": torch.zeros(4, 32)}, p), "missing \\['directions'\\]"),
        (lambda p: save_file({"directions": torch.full((4, 32), float("nan"))}, p), "NaN"),
    ],
    ids=["truncated", "garbage", "bad-offsets", "reshaped", "shape", "dtype", "names", "nan"],
)
def test_tampered_weights_are_refused_naming_the_file(tamper, message, tmp_path):
    out = save_featurizer(_featurizer("random:4"), tmp_path)
    tamper(out / "model.safetensors")
    with pytest.raises(DataFormatError, match=message) as info:
        load_featurizer(out)
    assert "model.safetensors" in str(info.value)


def test_bool_mask_stored_as_float_is_refused(tmp_path):
    out = save_featurizer(_featurizer("full"), tmp_path)
    save_file({"mask": torch.ones(D_MODEL)}, out / "model.safetensors")
    with pytest.raises(DataFormatError, match=r"mask.*\[32\] bool.*found \[32\] float32"):
        load_featurizer(out)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"d_model": ..., "k": ...}, "missing featurizer config fields d_model, k"),
        ({"schema_version": 99}, "expected featurizer schema_version 1, found 99"),
        ({"schema_version": ...}, "found None"),
        ({"method": "no_such_method"}, "unknown featurizer method 'no_such_method'"),
        ({"extra": 1}, "unknown featurizer config fields extra"),
        ({"d_model": "32"}, "'d_model' must be an integer"),
        ({"k": 99}, "k=99 must be in 0..n_features=4"),
        ({"d_model": 64}, r"should be \[4, 64\]"),
        ({"dtype": "float16"}, "dtype='float16': featurizers store and compute float32"),
        ({"orientation": "columns"}, "orientation='columns': only 'rows'"),
        ({"layer": -5}, "layer=-5 must be >= -1"),
        ({"layer": 3, "n_layers": 2}, "layer=3 is not a block of a model with n_layers=2"),
        ({"layer": 0, "site": "blocks.1.resid_post"}, "does not name layer 0"),
    ],
)
def test_bad_config_is_refused_naming_the_problem(changes, message, tmp_path):
    out = save_featurizer(_featurizer("random:4"), tmp_path)
    _edit_config(out, **changes)
    with pytest.raises(DataFormatError, match=message):
        load_featurizer(out)


@pytest.mark.parametrize(
    "spec, changes, message",
    [
        ("noop", {"k": 5}, "the mask swaps 0 neurons but the config says k=5"),
        ("full", {"method": "noop"}, "a 'noop' featurizer must swap 0 neurons; this mask swaps 32"),
    ],
)
def test_mask_that_contradicts_its_config_is_refused(spec, changes, message, tmp_path):
    """A control that is not what its config says (a "noop" that swaps neurons) never loads."""
    out = save_featurizer(_featurizer(spec), tmp_path)
    _edit_config(out, **changes)
    with pytest.raises(DataFormatError, match=message) as info:
        load_featurizer(out)
    assert "model.safetensors" in str(info.value)


def test_malformed_adapter_config_in_a_base_model_folder_names_the_file(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "adapter_config.json").write_text("{oops")
    out = save_featurizer(_featurizer("random:4", base_model=str(base)), tmp_path / "feat")
    with pytest.raises(DataFormatError, match=r"adapter_config.json: malformed JSON"):
        load_intervenable(out, device="cpu")


def test_missing_files_and_bad_sources(tmp_path, monkeypatch):
    with pytest.raises(DataFormatError, match="expected config.json"):
        load_featurizer(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="malformed JSON"):
        load_featurizer(tmp_path)
    out = save_featurizer(_featurizer("noop"), tmp_path / "f")
    (out / "model.safetensors").unlink()
    (out / "pytorch_model.bin").write_bytes(b"a pickle is never read")
    with pytest.raises(DataFormatError, match="expected model.safetensors"):
        load_featurizer(out)
    with pytest.raises(ConfigError, match="neither an existing folder nor a Hub repo id"):
        load_featurizer(str(tmp_path / "no" / "such" / "folder"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceUnavailableError, match="not in the local Hub cache"):
        load_featurizer("org/not-cached")


# ---------------------------------------------------------------------------------------------
# Featurizer + base model


def test_load_intervenable_loads_the_recorded_base_model(tmp_path, base_model_dir):
    featurizer = _featurizer("random:4", base_model=str(base_model_dir))
    out = save_featurizer(featurizer, tmp_path / "feat")
    intervenable = load_intervenable(out, device="cpu")
    assert isinstance(intervenable, Intervenable) and intervenable.layer == 0
    texts = intervenable.generate(*_generate_args())
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # full swap at the embeddings of single-token entities = prompting with the source entity
    full = save_featurizer(
        _featurizer("full", base_model=str(base_model_dir), layer=-1), tmp_path / "full"
    )
    full_swap = load_intervenable(full, device="cpu")
    base_t, _, _, sources = _generate_args()
    swapped = full_swap.generate(base_t, ENTITIES[:3], base_t, sources)
    noop = load_intervenable(
        save_featurizer(_featurizer("noop", base_model=str(base_model_dir)), tmp_path / "noop"),
        device="cpu",
    )
    assert swapped == noop.generate(base_t, sources, base_t, ENTITIES[:3])
    with pytest.raises(ConfigError, match="same length"):
        noop.generate(base_t, ENTITIES[:2], base_t, sources)


def test_base_model_mismatch_names_both_models(tmp_path, base_model_dir):
    out = save_featurizer(_featurizer("random:4", base_model=str(base_model_dir)), tmp_path)
    tokenizer = word_tokenizer()
    narrow = tiny_model("llama", vocab_size=len(tokenizer), n_layers=N_LAYERS, d_model=16)
    with pytest.raises(IncompatibleModelError) as info:
        load_intervenable(out, model=narrow, tokenizer=tokenizer)
    message = str(info.value)
    assert f"trained on {base_model_dir} (d_model=32, 2 layers)" in message
    assert "this model has hidden_size=16, 2 layers; load that base model or retrain" in message
    deep = tiny_model("llama", vocab_size=len(tokenizer), n_layers=3)
    with pytest.raises(IncompatibleModelError, match="hidden_size=32, 3 layers"):
        load_intervenable(out, model=deep, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="without its tokenizer"):
        load_intervenable(out, model=deep)


def test_layer_out_of_range_with_unknown_layer_count(tmp_path):
    featurizer = _featurizer("noop", n_layers=0, layer=5)
    out = save_featurizer(featurizer, tmp_path)
    with pytest.raises(IncompatibleModelError, match="layer 5; this model has 2 blocks"):
        load_intervenable(out, model=tiny_model("llama"), tokenizer=word_tokenizer())
    with pytest.raises(ConfigError, match="records no base model"):
        load_intervenable(out)


def test_base_model_recorded_as_a_folder_of_another_size(tmp_path):
    other = tmp_path / "other-llama"
    tiny_model("llama", n_layers=3, d_model=16).save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    featurizer = _featurizer("random:4", base_model=str(other))  # claims d_model 32, 2 layers
    with pytest.raises(IncompatibleModelError, match="hidden_size=16, 3 layers"):
        load_intervenable(save_featurizer(featurizer, tmp_path / "feat"), device="cpu")


def test_peft_adapter_as_base_model(tmp_path, base_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    adapter = tmp_path / "adapter"
    get_peft_model(base, lora).save_pretrained(adapter)  # no tokenizer: taken from the base
    out = save_featurizer(_featurizer("random:4", base_model=str(adapter)), tmp_path / "feat")
    intervenable = load_intervenable(out, device="cpu")
    assert type(intervenable.model).__name__ == "PeftModelForCausalLM"
    # The wrapper forwards **kwargs: the cache goes under the base model's current keyword.
    assert forward_kwargs(intervenable.model)[0] == forward_kwargs(base)[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        assert len(intervenable.generate(*_generate_args(2))) == 2


def _instance(intervenable: Intervenable) -> RavelInstance:
    """A hand-made instance whose labels are the model's own greedy outputs.

    Only (template, base, source) cells whose outputs hold no special token are kept, so a label
    re-tokenizes to exactly the generated ids.
    """
    attributes = ["Country", "Continent"]
    templates = {BASE_T[0]: "Country", BASE_T[2]: "Continent"}
    cells = [(t, b, s) for t in templates for b in ENTITIES[:4] for s in ENTITIES[4:8]]
    outputs = {}
    for t, e in {(t, e) for t, b, s in cells for e in (b, s)}:
        ids = intervened_generate(intervenable.model, intervenable.tokenizer, [t], [e], 0)[0]
        outputs[t, e] = " " + intervenable.tokenizer.decode(ids) if ids.min() >= 4 else None
    rows = [
        {
            "input": t % b,
            "label": outputs[t, b],
            "source_input": t % s,
            "source_label": outputs[t, s],
            "inv_label": outputs[t, s],
            "base_template": t,
            "source_template": t,
            "entity": b,
            "source_entity": s,
            "attribute": templates[t],
            "source_attribute": templates[t],
        }
        for t, b, s in cells
        if outputs[t, b] and outputs[t, s]
    ]
    assert {r["attribute"] for r in rows} == set(attributes)  # both attributes still have rows
    pairs = {f"{setting}/{split}": rows for setting, split in SETTINGS}
    metadata = {
        "model_id": "tiny-llama",
        "model_revision": None,
        "entity_type": "city",
        "attributes": attributes,
        "n_candidates": 8,
        "entity_accuracy": 1.0,
        "config": {"seed": 0},
        "entities": ENTITIES[:6],
        "templates": {t: {"attribute": a, "split": "train"} for t, a in templates.items()},
        "pair_counts": {key: len(rows) for key, rows in pairs.items()},
    }
    return RavelInstance(metadata=metadata, pairs=pairs)


def test_evaluate_scores_the_target_attribute_only(tmp_path, base_model_dir):
    noop = load_intervenable(
        save_featurizer(_featurizer("noop", base_model=str(base_model_dir)), tmp_path / "n"),
        device="cpu",
    )
    instance = _instance(noop)
    result = noop.evaluate(instance, "entity", "test")
    assert result.scores["isolate"] == 1.0  # labels are the model's own unedited outputs
    assert {r["target_attribute"] for r in result.rows} == {"Country", "Continent"}

    full = load_intervenable(
        save_featurizer(
            _featurizer("full", base_model=str(base_model_dir), layer=-1, attribute="Country"),
            tmp_path / "f",
        ),
        device="cpu",
    )
    result = full.evaluate(instance, "context", "val")
    assert {r["target_attribute"] for r in result.rows} == {"Country"}
    assert result.scores["cause"] == 1.0  # a full swap at the embeddings is the source prompt
    assert result.config["featurizer"] == str(tmp_path / "f")
    scores = scores_from_results([result])
    assert scores["context"]["val"]["cause"] == 1.0
    save_featurizer(full.featurizer.cpu(), tmp_path / "f", scores=scores)
    assert "| context | val | 1.000 |" in (tmp_path / "f" / "README.md").read_text()

    instance.metadata["attributes"] = ["Continent"]
    with pytest.raises(ConfigError, match="targets attribute 'Country'"):
        full.evaluate(instance, "context", "val")
    instance.metadata["entity_type"] = "nobel_prize_winner"
    with pytest.raises(ConfigError, match="trained on 'city' entities"):
        full.evaluate(instance, "context", "val")


# ---------------------------------------------------------------------------------------------
# Loading by repo id from the Hub cache, offline, in a fresh process


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as a cached Hub model repo at ``COMMIT`` (what a download leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    from ravel_bench.hub import load_featurizer, load_intervenable

    model = load_intervenable("org/tiny-random-4", device="cpu")
    pinned = load_featurizer("org/tiny-random-4", revision=sys.argv[1])
    args = json.loads(sys.argv[2])
    print(json.dumps({
        "texts": model.generate(*args),
        "directions": pinned.directions.tolist(),
        "config": pinned.config.__dict__,
    }))
    """
)


def test_load_by_repo_id_offline_in_a_fresh_process(tmp_path, base_model_dir):
    featurizer = _featurizer("random:4", base_model=str(base_model_dir))
    folder = save_featurizer(featurizer, tmp_path / "feat", repo_id="org/tiny-random-4")
    hub_home = tmp_path / "hf_home"
    _populate_hub_cache(hub_home / "hub", "org/tiny-random-4", folder)
    env = {
        **os.environ,
        "HF_HOME": str(hub_home),
        "HF_HUB_CACHE": str(hub_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    args = _generate_args()
    done = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, COMMIT, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = load_intervenable(folder, device="cpu").generate(*args)
    assert got["texts"] == expected
    assert torch.equal(torch.tensor(got["directions"]), featurizer.directions)
    assert got["config"] == featurizer.config.__dict__


# ---------------------------------------------------------------------------------------------
# Cards of the other artifacts, and push


class StubHfApi:
    """Records create_repo and upload_folder calls instead of making HTTP requests."""

    instances: list["StubHfApi"] = []

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.calls: list[tuple[str, tuple, dict]] = []
        StubHfApi.instances.append(self)

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", (repo_id,), kwargs))
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(kwargs.get("repo_type"), "")
        return f"https://huggingface.co/{prefix}{repo_id}"

    def upload_folder(self, **kwargs) -> None:
        self.calls.append(("upload_folder", (), kwargs))


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small hand-made instance, saved with save_instance."""
    template = "%s is a city in the country of"
    row = {
        "input": template % "Paris",
        "label": " France",
        "source_input": template % "Tokyo",
        "source_label": " Japan",
        "inv_label": " Japan",
        "base_template": template,
        "source_template": template,
        "entity": "Paris",
        "source_entity": "Tokyo",
        "attribute": "Country",
        "source_attribute": "Country",
    }
    pairs = {f"{setting}/{split}": [row] for setting, split in SETTINGS}
    metadata = {
        "model_id": "org/some-lm",
        "model_revision": "abc123",
        "entity_type": "city",
        "attributes": ["Country"],
        "n_candidates": 2,
        "entity_accuracy": 1.0,
        "config": {"seed": 0},
        "entities": ["Paris", "Tokyo"],
        "templates": {template: {"attribute": "Country", "split": "train"}},
        "pair_counts": {key: 1 for key in pairs},
    }
    return save_instance(
        RavelInstance(metadata=metadata, pairs=pairs), tmp_path_factory.mktemp("i") / "inst"
    )


def test_other_cards_parse(built_dataset, instance_dir):
    dataset = DatasetCard.load(built_dataset / "README.md")
    assert dataset.data.license == "mit" and dataset.data.configs
    instance = DatasetCard.load(instance_dir / "README.md")
    assert instance.data.configs[0]["config_name"] == "city_train"
    assert "org/some-lm" in instance.text
    metric = SpaceCard.load(METRIC_DIR / "README.md")
    assert metric.data.sdk == "static" and "evaluate" in metric.data.tags


@pytest.mark.parametrize(
    "kind, repo_type",
    [("dataset", "dataset"), ("instance", "dataset"), ("metric", "space")]
    + [("featurizer", "model")],
)
def test_push_each_kind(kind, repo_type, tmp_path, built_dataset, instance_dir):
    folder = {
        "dataset": built_dataset,
        "instance": instance_dir,
        "metric": METRIC_DIR,
        "featurizer": save_featurizer(_featurizer("noop"), tmp_path / "feat"),
    }[kind]
    repo_id = "org/ravel_disentangle" if kind == "metric" else f"org/{kind}"
    api = StubHfApi()
    url = push(kind, folder, repo_id, private=True, api=api)
    assert url.endswith(repo_id)
    (create, create_args, create_kwargs), (upload, _, upload_kwargs) = api.calls
    assert (create, create_args) == ("create_repo", (repo_id,))
    assert create_kwargs["repo_type"] == repo_type and create_kwargs["private"] is True
    assert create_kwargs["exist_ok"] is True
    assert create_kwargs.get("space_sdk") == ("static" if kind == "metric" else None)
    assert upload == "upload_folder"
    assert upload_kwargs["folder_path"] == str(folder) and upload_kwargs["repo_id"] == repo_id
    assert upload_kwargs["repo_type"] == repo_type


@pytest.mark.parametrize("kind", ["dataset", "instance", "metric", "featurizer"])
def test_push_refuses_an_empty_folder(kind, tmp_path):
    api = StubHfApi()
    with pytest.raises(DataFormatError, match=f"is not a {kind} folder: expected .*; missing"):
        push(kind, tmp_path, "org/ravel_disentangle", api=api)
    assert api.calls == []


def test_push_refuses_bad_arguments(tmp_path):
    api = StubHfApi()
    with pytest.raises(ConfigError, match="unknown artifact kind 'model'"):
        push("model", tmp_path, "org/x", api=api)
    with pytest.raises(ConfigError, match="not of the form owner/name"):
        push("dataset", tmp_path, "just-a-name", api=api)
    with pytest.raises(ConfigError, match="is not a folder"):
        push("dataset", tmp_path / "missing", "org/x", api=api)
    with pytest.raises(
        ConfigError, match="looks for metric.py in the Space; .* has ravel_disentangle.py"
    ):
        push("metric", METRIC_DIR, "org/metric", api=api)
    out = save_featurizer(_featurizer("random:4"), tmp_path / "feat")
    save_file({"directions": torch.zeros(3, 32)}, out / "model.safetensors")
    with pytest.raises(DataFormatError, match="model.safetensors"):
        push("featurizer", out, "org/x", api=api)
    save_featurizer(_featurizer("noop"), tmp_path / "noop")
    (tmp_path / "noop" / "README.md").write_text("no YAML header")
    with pytest.raises(DataFormatError, match="expected a YAML header"):
        push("featurizer", tmp_path / "noop", "org/x", api=api)
    card_without_configs = tmp_path / "dataset"
    card_without_configs.mkdir()
    (card_without_configs / "README.md").write_text("---\nlicense: mit\n---\n# x\n")
    (card_without_configs / "x.parquet").write_bytes(b"")
    with pytest.raises(DataFormatError, match="expected a `configs:` list"):
        push("dataset", card_without_configs, "org/x", api=api)
    static = tmp_path / "ravel_disentangle"
    static.mkdir()
    for name in ("README.md", "ravel_disentangle.py"):
        (static / name).write_bytes((METRIC_DIR / name).read_bytes())
    with pytest.raises(DataFormatError, match="static Space .* without index.html"):
        push("metric", static, "org/ravel_disentangle", api=api)
    assert api.calls == []


def test_push_command(tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.setattr("ravel_bench.hub.HfApi", StubHfApi)
    parser = argparse.ArgumentParser(prog="ravel-bench")
    add_push_parser(parser.add_subparsers(dest="command", required=True))
    folder = save_featurizer(_featurizer("noop"), tmp_path / "feat")
    args = parser.parse_args(
        ["push", "featurizer", str(folder), "--repo-id", "org/noop", "--token", "hf_x"]
    )
    assert args.func is cmd_push and cmd_push(args) == 0
    assert "pushed to https://huggingface.co/org/noop" in capsys.readouterr().out
    assert StubHfApi.instances[-1].token == "hf_x"
    assert StubHfApi.instances[-1].calls[0][2]["private"] is False


def test_identity_featurizer_saved_with_float_mask_is_refused_at_save(tmp_path):
    featurizer = IdentityFeaturizer.full(8)
    featurizer.mask = torch.ones(8, dtype=torch.float64)
    with pytest.raises(ConfigError, match="'mask' is torch.float64.*dtype='float32'"):
        save_featurizer(featurizer, tmp_path)
