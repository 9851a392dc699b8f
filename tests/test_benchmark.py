"""The benchmark loop on the tiny random city model: outputs, averaging and resuming."""

import json
from dataclasses import replace

import pytest

import ravel_bench.benchmark as benchmark
from ravel_bench.benchmark import BenchmarkConfig, run_benchmark
from ravel_bench.errors import ConfigError
from ravel_bench.evaluation import evaluate_featurizer
from ravel_bench.featurizers.baselines import IdentityFeaturizer
from ravel_bench.models import LoadedModel
from ravel_bench.training import TrainConfig


@pytest.fixture
def loaded(tiny_city):
    model, tokenizer, _, _ = tiny_city
    return LoadedModel(model, tokenizer, "tiny-random")


def test_benchmark_writes_leaderboard_and_resumes(tiny_city, city, loaded, tmp_path, monkeypatch):
    _, _, instance, _ = tiny_city
    config = BenchmarkConfig(
        methods=("das", "full", "noop"),
        layer=0,
        k=4,
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-2),
    )
    results = run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert set(results) == {"das", "full", "noop"}
    noop = results["noop"]
    assert noop["context"]["cause"] == 0.0 and noop["context"]["isolate"] == 1.0
    for name in ("results.json", "leaderboard.md", "cause_vs_isolate.png"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["_meta"]["site"] == "blocks.0.resid_post"
    assert "| noop |" in (tmp_path / "leaderboard.md").read_text()
    das = tmp_path / "featurizers" / "das-Country"
    assert (das / "model.safetensors").is_file() and (das / "README.md").is_file()

    calls = []
    monkeypatch.setattr(benchmark, "train_featurizer", lambda *a, **k: calls.append(a))
    again = run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert calls == [] and again == results  # finished units are reused, not redone
    more = replace(config, methods=("das", "full", "noop", "random"))
    assert set(run_benchmark(loaded, instance, city, more, tmp_path, show_progress=False)) == {
        "das",
        "full",
        "noop",
        "random",
    }  # a run can be extended with methods
    fewer = replace(config, methods=("noop",))
    kept = run_benchmark(loaded, instance, city, fewer, tmp_path, show_progress=False)
    assert list(kept) == ["noop", "das", "full", "random"]  # finished ones stay listed
    assert kept["das"] == results["das"]
    assert "| das |" in (tmp_path / "leaderboard.md").read_text()
    (tmp_path / "evals" / "random-Country.json").unlink()  # no longer finished for every attribute
    assert "random" not in run_benchmark(
        loaded, instance, city, fewer, tmp_path, show_progress=False
    )

    other = replace(config, k=8)  # would reuse das-Country trained with k=4
    with pytest.raises(ConfigError, match="run with other settings \\(benchmark differ\\)"):
        run_benchmark(loaded, instance, city, other, tmp_path, show_progress=False)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown methods \\['lda'\\]"):
        BenchmarkConfig(methods=("lda",))


def test_attribute_independent_work_is_done_once(tiny_city, city, loaded, tmp_path, monkeypatch):
    import ravel_bench.featurizers.pca as pca_module

    _, _, instance, _ = tiny_city
    fits = []
    real_fit = pca_module.fit_pca
    monkeypatch.setattr(pca_module, "fit_pca", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    config = BenchmarkConfig(methods=("pca",), layer=0, k=4)
    run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert len(fits) == 1  # one PCA for both attributes
    for attribute in ("Country", "Continent"):
        saved = json.loads(
            (tmp_path / "featurizers" / f"pca-{attribute}" / "config.json").read_text()
        )
        assert saved["attribute"] == attribute and saved["base_model"] == "tiny-random"


def _record_pca_and_sae_argument(monkeypatch, argument: str) -> list:
    """Patch the benchmark's PCA and SAE trainers to record one keyword argument of each call."""
    seen = []
    for name in ("train_pca", "train_sae"):
        real = getattr(benchmark, name)

        def recording(*args, _real=real, **kwargs):
            seen.append(kwargs[argument])
            return _real(*args, **kwargs)

        monkeypatch.setattr(benchmark, name, recording)
    return seen


def test_a_feature_budget_caps_pca_sae_and_the_masks(
    tiny_city, city, loaded, tmp_path, monkeypatch
):
    _, _, instance, _ = tiny_city
    budgets = _record_pca_and_sae_argument(monkeypatch, "k")
    config = BenchmarkConfig(
        methods=("pca", "sae", "dbm", "das"),
        layer=0,
        k=4,
        train=TrainConfig(epochs=1, batch_size=4),
        max_features=3,
    )
    run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert budgets and set(budgets) == {3}  # PCA and SAE select their top 3 at most
    dbm = json.loads((tmp_path / "featurizers" / "dbm-Country" / "config.json").read_text())
    assert 1 <= dbm["k"] <= 3  # without the budget this mask keeps 7 neurons
    das = json.loads((tmp_path / "featurizers" / "das-Country" / "config.json").read_text())
    assert das["k"] == 4  # DAS keeps its k
    with pytest.raises(ConfigError, match="max_features=0 must be >= 1"):
        BenchmarkConfig(max_features=0)


def test_the_selection_strength_reaches_pca_and_sae_and_is_recorded(
    tiny_city, city, loaded, tmp_path, monkeypatch
):
    _, _, instance, _ = tiny_city
    strengths = _record_pca_and_sae_argument(monkeypatch, "C")
    config = BenchmarkConfig(methods=("pca", "sae"), layer=0, k=4, selection_c=0.05)
    run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert strengths and set(strengths) == {0.05}
    card = (tmp_path / "featurizers" / "pca-Country" / "README.md").read_text()
    assert "selection_c" in card and "0.05" in card
    with pytest.raises(ConfigError, match="run with other settings \\(benchmark differ\\)"):
        run_benchmark(
            loaded, instance, city, replace(config, selection_c=0.1), tmp_path, show_progress=False
        )
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="selection_c=.* must be a positive number"):
            BenchmarkConfig(selection_c=bad)
    with pytest.raises(ConfigError, match="l1_coefficient=-1 must be a number >= 0"):
        TrainConfig(l1_coefficient=-1)


def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default(
    tiny_city, city, loaded, tmp_path, monkeypatch
):
    _, _, instance, _ = tiny_city
    config = BenchmarkConfig(methods=("noop",), layer=0, k=4)
    run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    run_file = tmp_path / "run.json"
    older = json.loads(run_file.read_text())
    del older["benchmark"]["selection_c"]  # as a run.json of an older ravel-bench
    run_file.write_text(json.dumps(older))
    calls = []
    monkeypatch.setattr(benchmark, "evaluate_featurizer", lambda *a, **k: calls.append(a))
    run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert calls == []  # resumed: nothing redone
    with pytest.raises(ConfigError, match="run with other settings"):
        run_benchmark(
            loaded, instance, city, replace(config, selection_c=0.2), tmp_path, show_progress=False
        )


def test_choose_layer_takes_the_first_block_that_still_carries_the_entity() -> None:
    cause = {"entity": [0.79, 0.85, 0.9, 0.1], "context": [0.95, 0.81, 0.7, 0.0]}
    layer, why = benchmark.choose_layer(cause)
    assert layer == 1  # block 0 fails in the entity setting, block 2 in the context setting
    assert why.startswith("block 1:") and "0.810" in why


def test_choose_layer_falls_back_to_the_best_block() -> None:
    layer, why = benchmark.choose_layer({"entity": [0.5, 0.7, 0.2], "context": [0.6, 0.6, 0.9]})
    assert layer == 1  # lowest-setting Cause per block: .5, .6, .2
    assert "no block" in why and "0.600" in why
    with pytest.raises(ConfigError, match="one Cause per block"):
        benchmark.choose_layer({"entity": [0.9, 0.9], "context": [0.9]})


def test_interrupted_writes_are_redone_not_reused(tiny_city, city, loaded, tmp_path):
    """A unit whose eval file or featurizer was cut short by an interruption is redone."""
    _, _, instance, _ = tiny_city
    config = BenchmarkConfig(
        methods=("das", "noop"), layer=0, k=4, train=TrainConfig(epochs=1, batch_size=4, lr=1e-2)
    )
    results = run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    cut_eval = tmp_path / "evals" / "noop-Country.json"
    cut_eval.write_text(cut_eval.read_text()[:20])
    weights = tmp_path / "featurizers" / "das-Country" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (tmp_path / "evals" / "das-Country.json").unlink()  # the save was cut before evaluation
    again = run_benchmark(loaded, instance, city, config, tmp_path, show_progress=False)
    assert again == results  # the same seed retrains the same featurizer
    assert json.loads(cut_eval.read_text())["entity"] is not None
    assert not list(tmp_path.rglob(".*.tmp-*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"k": 0}, "BenchmarkConfig.k=0 must be >= 1"),
        ({"batch_size": 0}, "BenchmarkConfig.batch_size=0 must be >= 1"),
    ],
)
def test_bad_sizes_are_refused_before_any_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        BenchmarkConfig(**changes)


def test_the_val_split_scores_the_val_pairs(tiny_city, city, loaded, tmp_path):
    _, _, instance, _ = tiny_city
    val = BenchmarkConfig(methods=("full",), layer=0, k=4, split="val")
    results = run_benchmark(loaded, instance, city, val, tmp_path, show_progress=False)
    expected = evaluate_featurizer(
        loaded.model,
        loaded.tokenizer,
        instance,
        {"Country": IdentityFeaturizer.full(loaded.model.config.hidden_size)},
        0,
        "entity",
        "val",
        show_progress=False,
    ).scores["per_attribute"]["Country"]
    assert results["full"]["per_attribute"]["Country"]["entity"] == expected
    assert "val split" in (tmp_path / "leaderboard.md").read_text()
    with pytest.raises(ConfigError, match="split='train'; expected 'test' or 'val'"):
        BenchmarkConfig(split="train")


def test_run_settings_are_checked_before_the_folder_is_claimed(
    tiny_city, city, loaded, tmp_path, release_tgz
):
    from ravel_bench.data import load_release

    _, _, instance, _ = tiny_city
    too_wide = BenchmarkConfig(methods=("das",), layer=0, k=10_000)
    with pytest.raises(ConfigError, match="k=10000 is larger than the model's d_model"):
        run_benchmark(loaded, instance, city, too_wide, tmp_path / "a", show_progress=False)
    occupation = load_release(release_tgz, ("occupation",)).types["occupation"]
    config = BenchmarkConfig(methods=("noop",), layer=0, k=4)
    with pytest.raises(ConfigError, match="release part is 'occupation' but the instance"):
        run_benchmark(loaded, instance, occupation, config, tmp_path / "b", show_progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written


def test_a_folder_that_is_not_a_benchmark_run_is_refused(tiny_city, city, loaded, tmp_path):
    _, _, instance, _ = tiny_city
    config = BenchmarkConfig(methods=("noop",), layer=0, k=4)
    other = tmp_path / "evaluate-output"
    other.mkdir()
    (other / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not empty \\(results.json\\) and holds no run.json"):
        run_benchmark(loaded, instance, city, config, other, show_progress=False)
    assert (other / "results.json").read_text() == "{}"
    cut = tmp_path / "cut"
    run_benchmark(loaded, instance, city, config, cut, show_progress=False)
    (cut / "run.json").write_text('{"model_id": ')
    with pytest.raises(ConfigError, match="run.json is unreadable"):
        run_benchmark(loaded, instance, city, config, cut, show_progress=False)
