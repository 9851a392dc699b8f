"""The benchmark's helpers: matrix orientation (no pyvene), and pyvene against ravel-bench.

The pyvene tests are skipped where the ``bench`` extra is not installed (as in CI).
"""

import pytest
import torch

from benchmarks.orientation import directions_from_pyvene, low_rank_intervene, pyvene_weight
from benchmarks.workload import (
    SHAPES,
    ModelShape,
    build_model,
    build_workload,
    distinct_sources,
)
from ravel_bench.featurizers.baselines import random_subspace

TINY = ModelShape("llama 2x32", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64, layer=0)


def test_pyvene_weight_is_the_transpose_and_intervenes_the_same():
    featurizer = random_subspace(32, 4, seed=3)
    directions = featurizer.directions  # [k, d_model]
    weight = pyvene_weight(directions)
    assert weight.shape == (32, 4)
    torch.testing.assert_close(weight.T @ weight, torch.eye(4), atol=1e-5, rtol=0)
    assert torch.equal(directions_from_pyvene(weight), directions)
    base, source = torch.randn(5, 32), torch.randn(5, 32)
    torch.testing.assert_close(
        low_rank_intervene(base, source, weight), featurizer.intervene(base, source)
    )
    # The wrong orientation is refused rather than silently transposed.
    with pytest.raises(ValueError, match=r"\[k, d_model\]"):
        pyvene_weight(weight)
    with pytest.raises(ValueError, match=r"\[d_model, k\]"):
        directions_from_pyvene(directions)


@pytest.fixture(scope="module")
def tiny_workload(release_tgz):
    return build_workload(release_tgz, n_entities=8, templates_per_attribute=2)


def test_workload_pairs_are_deterministic(tiny_workload, release_tgz):
    again = build_workload(release_tgz, n_entities=8, templates_per_attribute=2)
    assert again.pairs == tiny_workload.pairs
    subset = tiny_workload.subset(10, seed=1)
    assert subset == tiny_workload.subset(10, seed=1) and len(subset) == 10
    assert 0 < distinct_sources(subset) <= 10


def test_pyvene_and_ravel_bench_generate_the_same_tokens(tiny_workload):
    pytest.importorskip("pyvene")
    from benchmarks import sides

    pairs = tiny_workload.pairs
    model = build_model(TINY, len(tiny_workload.tokenizer))
    featurizer = random_subspace(TINY.d_model, 8, seed=0)
    intervenable = sides.pyvene_intervenable(model, TINY.layer, 8)
    sides.load_directions(intervenable, featurizer.directions)
    ours = sides.ravel_eval(model, tiny_workload.tokenizer, pairs, TINY.layer, featurizer, 16)
    theirs = sides.pyvene_eval(intervenable, tiny_workload.tokenizer, pairs, 16)
    assert ours.shape == (len(pairs), 3)
    assert ours.tolist() == theirs.tolist()


def test_pyvene_and_ravel_bench_training_losses_agree(tiny_workload):
    pytest.importorskip("pyvene")
    from benchmarks import sides

    model = build_model(TINY, len(tiny_workload.tokenizer))
    instance = tiny_workload.instance()
    config = sides.das_config("das", batch_size=4, k=4, n_examples=12)
    _, ours = sides.ravel_train(model, tiny_workload.tokenizer, instance, "Country", 0, config)
    examples, rotation, batches = sides.training_plan(instance, "Country", TINY.d_model, config)
    intervenable = sides.pyvene_intervenable(model, 0, config.k)
    theirs = sides.pyvene_train(
        intervenable, tiny_workload.tokenizer, examples, rotation, batches, config.lr
    )
    assert len(ours) == len(theirs) == 3
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_build_model_is_seeded_and_takes_a_dtype():
    first, again = build_model(TINY, 50, seed=4), build_model(TINY, 50, seed=4)
    assert first.dtype == torch.float32
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    half = build_model(TINY, 50, seed=4, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32
    assert half.lm_head.weight.shape == (50, TINY.d_model)


def test_the_gpu_benchmark_runs_on_the_cpu(release_tgz, tmp_path):
    """``python -m benchmarks.gpu --device cpu --quick``: its smoke test, report and results."""
    pytest.importorskip("pyvene")
    import json

    import transformers.masking_utils

    from benchmarks import gpu

    original_check = transformers.masking_utils._ignore_causal_mask_sdpa
    assert (
        gpu.main(
            ["--device", "cpu", "--quick", "--release", str(release_tgz), "--out", str(tmp_path)]
        )
        == 0
    )
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    float32 = next(r for r in results["eval"] if r["dtype"] == "float32")
    assert float32["agreement"] == 1.0  # same math, float32: every generation identical
    bf16 = next(r for r in results["eval"] if r["dtype"] == "bfloat16")
    assert bf16["ravel_flops"] > 0 and bf16["pyvene_flops"] > bf16["ravel_flops"]
    # bf16 rounding moves both sides about as far from the same weights run in float32.
    assert bf16["ravel_vs_float32"] >= bf16["pyvene_vs_float32"] - 0.05
    report = (tmp_path / "gpu_results.md").read_text()
    assert "cuDNN" in report and "no mask-skip check" in report
    # Always building the explicit mask computes the same attention (bf16 rounding aside): the
    # generations agree with the default run's, and transformers is left as it was.
    assert bf16["ravel_no_mask_check_vs_ravel_identical"] >= 0.9
    import transformers.masking_utils

    assert transformers.masking_utils._ignore_causal_mask_sdpa is original_check


@pytest.mark.parametrize("side", ["ravel", "pyvene"])
def test_a_training_measurement_in_a_fresh_process_reports_its_memory_and_losses(
    side, release_tgz, tmp_path, capsys
):
    """``benchmarks.child`` with ``task: train``: one JSON line, and every step's loss."""
    pytest.importorskip("pyvene")
    import json

    from safetensors.torch import load_file

    from benchmarks import child, sides

    spec = {
        "task": "train",
        "side": side,
        "shape": "toy",
        "method": "das",
        "n_examples": 8,
        "k": 4,
        "batch_size": 4,
        "n_entities": 8,
        "release": str(release_tgz),
        "out": str(tmp_path / "losses.st"),
        "threads": 1,
        "seed": 0,
    }
    assert child.main([json.dumps(spec)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["peak_rss"] >= line["rss_before"] > 0 and line["seconds"] > 0
    losses = load_file(spec["out"])["losses"]
    # The same run in this process: the child measured the training it claims to.
    workload = build_workload(release_tgz, 8, seed=0)
    model = build_model(SHAPES["toy"], len(workload.tokenizer), seed=0)
    config = sides.das_config("das", 4, 4, 8)
    _, expected = sides.ravel_train(
        model, workload.tokenizer, workload.instance(), "Country", SHAPES["toy"].layer, config
    )
    assert losses.tolist() == pytest.approx(expected, rel=1e-4)
