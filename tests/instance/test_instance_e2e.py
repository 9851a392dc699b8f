"""Instances and evaluation end to end on a tiny random Llama reading real RAVEL city prompts.

The model is untrained, so the instance is built with ``require_correct=False``: labels are the
model's own greedy outputs, which is all the invariants below need.
"""

import datasets
import pytest

from ravel_bench.engine.blocks import EMBEDDINGS
from ravel_bench.errors import ConfigError
from ravel_bench.evaluation import evaluate_featurizer
from ravel_bench.featurizers import parse_featurizer_spec
from ravel_bench.instance.build import build_instance
from ravel_bench.instance.repo import load_instance, save_instance

ATTRIBUTES = ("Country", "Continent")


def test_instance_contents(tiny_city, city):
    _, _, instance, _ = tiny_city
    meta = instance.metadata
    assert meta["attributes"] == list(ATTRIBUTES) and meta["model_id"] == "tiny-random"
    assert len(meta["entities"]) == 15
    per = {(i["attribute"], i["split"]) for i in meta["templates"].values()}
    assert per == {(a, s) for a in ATTRIBUTES for s in ("train", "val", "test")}
    for key, pairs in instance.pairs.items():
        setting, split = key.split("/")
        assert pairs, key
        for p in pairs:
            assert p["label"] != p["inv_label"] and p["entity"] != p["source_entity"]
            base_split = "train" if setting == "context" else split
            assert city.entity_split[p["entity"]] == base_split
            assert city.entity_split[p["source_entity"]] == base_split
            template_split = "train" if setting == "entity" else split
            assert city.template_split[p["base_template"]] == template_split
            assert p["input"] == p["base_template"] % p["entity"]


def test_same_seed_same_instance(tiny_city, city):
    model, tokenizer, instance, config = tiny_city
    again = build_instance(
        model, tokenizer, city, config, model_id="tiny-random", show_progress=False
    )
    assert again.pairs == instance.pairs and again.metadata == instance.metadata


def _check_rows(result, cause_correct: bool) -> None:
    """Every cause row is `cause_correct`, every isolate row the opposite; scores match exactly."""
    assert result.rows
    for row in result.rows:
        assert row["correct"] is (cause_correct if row["kind"] == "cause" else not cause_correct)
    expected = {"cause": float(cause_correct), "isolate": float(not cause_correct)}
    for scores in result.scores["per_attribute"].values():
        for part, value in expected.items():
            assert scores[part] in (None, value)


@pytest.mark.parametrize("setting", ["entity", "context"])
def test_noop_isolates_everything_and_causes_nothing(tiny_city, setting):
    model, tokenizer, instance, _ = tiny_city
    result = evaluate_featurizer(
        model,
        tokenizer,
        instance,
        parse_featurizer_spec("noop", 32),
        0,
        setting,
        "test",
        show_progress=False,
    )
    _check_rows(result, cause_correct=False)


@pytest.mark.parametrize("setting", ["entity", "context"])
def test_full_swap_at_embeddings_causes_everything(tiny_city, setting):
    model, tokenizer, instance, _ = tiny_city
    result = evaluate_featurizer(
        model,
        tokenizer,
        instance,
        parse_featurizer_spec("full", 32),
        EMBEDDINGS,
        setting,
        "test",
        show_progress=False,
    )
    _check_rows(result, cause_correct=True)


def test_context_test_scores_in_saebench_layout(tiny_city):
    model, tokenizer, instance, _ = tiny_city
    result = evaluate_featurizer(
        model,
        tokenizer,
        instance,
        parse_featurizer_spec("full", 32),
        EMBEDDINGS,
        "context",
        "test",
        show_progress=False,
    )
    assert result.to_json()["eval_result_metrics"]["ravel"] == {
        "disentanglement_score": 0.5,
        "cause_score": 1.0,
        "isolation_score": 0.0,
    }


def test_batch_size_does_not_change_predictions(tiny_city):
    model, tokenizer, instance, _ = tiny_city
    featurizer = parse_featurizer_spec("random:4", 32, seed=1)
    rows = [
        [
            r["generated"]
            for r in evaluate_featurizer(
                model,
                tokenizer,
                instance,
                featurizer,
                1,
                "entity",
                "val",
                batch_size=b,
                show_progress=False,
            ).rows
        ]
        for b in (1, 7, 64)
    ]
    assert rows[0] == rows[1] == rows[2]


def test_save_load_round_trip_and_load_dataset(tiny_city, tmp_path):
    _, _, instance, _ = tiny_city
    folder = save_instance(instance, tmp_path / "inst")
    loaded = load_instance(folder)
    assert loaded.pairs == instance.pairs and loaded.metadata == instance.metadata
    entity = datasets.load_dataset(str(folder), "city_entity")
    assert entity["test"].num_rows == len(instance.pairs["entity/test"])
    assert "tiny-random" in (folder / "README.md").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        save_instance(instance, folder)


def test_unknown_setting_split(tiny_city):
    _, _, instance, _ = tiny_city
    with pytest.raises(ConfigError, match="no 'entity' pairs for split 'dev'"):
        instance.split("entity", "dev")
