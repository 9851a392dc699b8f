"""The command line: evaluate on a saved instance, layer sweeps, and its one-line errors."""

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from ravel_bench.cli import main
from ravel_bench.instance.repo import save_instance


@pytest.fixture(scope="module")
def saved(tiny_city, tmp_path_factory):
    """The tiny model saved as a folder, and its instance recording that folder as model id."""
    model, tokenizer, instance, _ = tiny_city
    root = tmp_path_factory.mktemp("cli")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    instance = replace(instance, metadata={**instance.metadata, "model_id": str(root / "model")})
    save_instance(instance, root / "instance")
    return root


def test_evaluate_one_layer(saved, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "-q",
            "evaluate",
            "--instance",
            str(saved / "instance"),
            "--featurizer",
            "noop",
            "--layer",
            "1",
            "--setting",
            "context",
            "--split",
            "test",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["eval_result_metrics"]["ravel"]["isolation_score"] == 1.0
    assert results["eval_config"]["site"] == "blocks.1.resid_post"
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert {"input", "source_input", "expected", "generated", "correct", "kind"} <= set(table[0])
    assert "noop on city context/test" in capsys.readouterr().out


def test_evaluate_layer_sweep(saved, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "-q",
            "evaluate",
            "--instance",
            str(saved / "instance"),
            "--featurizer",
            "full",
            "--layer",
            "all",
            "--setting",
            "entity",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    layers = json.loads((out / "results.json").read_text())["layers"]
    assert list(layers) == ["embeddings", "0", "1"]
    ravel = layers["embeddings"]["eval_result_metrics"]["ravel"]
    assert ravel["cause_score"] in (1.0, None)
    printed = capsys.readouterr().out
    assert "embeddings" in printed and "\n1 " in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "7"], "error: layer 7 is out of range: this model has 2 blocks (0..1)"),
        (["--layer", "middle"], "error: layer 'middle' is not 'embeddings' or a block index 0..1"),
        (["--layer", "0", "--featurizer", "pca"], "error: unknown featurizer 'pca'"),
    ],
)
def test_evaluate_errors(saved, tmp_path, capsys, args, message):
    featurizer = [] if "--featurizer" in args else ["--featurizer", "full"]
    base = ["evaluate", "--instance", str(saved / "instance"), "--output", str(tmp_path / "x")]
    assert main([*base, *featurizer, *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_instance_for_another_model(saved, tiny_city, tmp_path, capsys):
    model, tokenizer, _, _ = tiny_city
    model.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    args = [
        "evaluate",
        "--instance",
        str(saved / "instance"),
        "--featurizer",
        "full",
        "--layer",
        "0",
        "--output",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--model", str(tmp_path / "other")]) == 1
    assert f"was built for {saved / 'model'}, not {tmp_path / 'other'}" in capsys.readouterr().err
    assert main([*args, "--model", str(saved / "instance")]) == 1
    err = capsys.readouterr().err
    assert "cannot load" in err and "as a causal LM with a tokenizer" in err


def test_missing_instance(tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--instance",
            str(tmp_path),
            "--featurizer",
            "full",
            "--layer",
            "0",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "is not a RAVEL instance: instance.json is missing" in capsys.readouterr().err


def test_usage_errors_exit_2():
    assert main([]) == 2
    assert main(["evaluate", "--featurizer", "full"]) == 2


def test_instance_command_on_the_embedded_test_model(release_tgz, tmp_path, capsys):
    code = main(
        [
            "-q",
            "instance",
            "--model",
            "toy-tiny",
            "--source",
            str(release_tgz),
            "--out",
            str(tmp_path / "inst"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "inst" / "instance.json").read_text())
    assert meta["model_id"].startswith("toy-llama-city-2x64-")
    # A toy model is queried only on the entities and attributes it was trained on.
    assert meta["n_candidates"] == 20
    assert set(meta["attributes"]) <= {"Continent", "Country"}
    assert "pairs" in capsys.readouterr().out


def test_training_defaults_of_the_cli_are_the_library_defaults():
    from ravel_bench.benchmark import BenchmarkConfig
    from ravel_bench.cli import _benchmark_config, build_parser
    from ravel_bench.training import TrainConfig

    args = build_parser().parse_args(["benchmark", "--output", "x"])
    defaults = TrainConfig()
    assert (args.lr, args.epochs, args.train_batch_size, args.dim, args.l1) == (
        defaults.lr,
        defaults.epochs,
        defaults.batch_size,
        defaults.k,
        defaults.l1_coefficient,
    )
    assert args.selection_c == BenchmarkConfig().selection_c
    assert _benchmark_config(args, ("das",), 0) == BenchmarkConfig(methods=("das",), layer=0)


def test_sparsity_flags_reach_the_masks_and_the_selection():
    from ravel_bench.cli import _benchmark_config, build_parser

    flags = ["benchmark", "--output", "x", "--l1", "3", "--selection-c", "0.01"]
    config = _benchmark_config(build_parser().parse_args(flags), ("dbm", "pca"), 0)
    assert config.train.l1_coefficient == 3.0 and config.selection_c == 0.01
    assert config.split == "test"
    val = build_parser().parse_args(["benchmark", "--output", "x", "--split", "val"])
    assert _benchmark_config(val, ("dbm",), 0).split == "val"
    train = build_parser().parse_args(
        ["train", "--method", "das", "--attribute", "Country"] + ["--layer", "0", "--output", "x"]
    )
    assert _benchmark_config(train, ("das",), 0).split == "test"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--l1", "-1", "argument --l1: -1 must be >= 0"),
        ("--l1", "nan", "argument --l1: nan must be >= 0"),
        ("--selection-c", "0", "argument --selection-c: 0 must be > 0"),
        ("--lr", "fast", "argument --lr: 'fast' is not a number"),
        ("--epochs", "0", "argument --epochs: 0 must be >= 1"),
        ("--max-features", "0", "argument --max-features: 0 must be >= 1"),
        ("--split", "train", "argument --split: invalid choice: 'train'"),
    ],
)
def test_bad_hyperparameters_are_usage_errors(tmp_path, capsys, flag, value, message):
    assert main(["benchmark", "--output", str(tmp_path / "b"), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "flags", [["--batch-size", "0"], ["--batch-size", "-1"], ["--batch-size", "many"]]
)
def test_sizes_below_one_are_usage_errors(saved, tmp_path, flags, capsys):
    args = ["evaluate", "--instance", str(saved / "instance"), "--featurizer", "full"]
    assert main([*args, "--output", str(tmp_path / "o"), *flags]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["benchmark", "--output", str(tmp_path / "b"), "--dim", "0"]) == 2
    assert "argument --dim: 0 must be >= 1" in capsys.readouterr().err


def test_output_that_is_a_file_is_refused_before_any_work(saved, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    args = ["evaluate", "--instance", str(saved / "instance"), "--featurizer", "full"]
    assert main([*args, "--layer", "0", "--output", str(target)]) == 1
    assert f"--output {target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_damaged_instance_files_name_the_file(saved, tmp_path, capsys):
    import shutil

    broken = tmp_path / "instance"
    shutil.copytree(saved / "instance", broken)
    parquet = next(broken.glob("city_context/test-*.parquet"))
    parquet.write_bytes(b"not parquet")
    args = ["evaluate", "--instance", str(broken), "--featurizer", "full", "--layer", "0"]
    assert main([*args, "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{parquet}: not a readable parquet file" in err and "Traceback" not in err
    meta = json.loads((broken / "instance.json").read_text())
    del meta["attributes"]
    (broken / "instance.json").write_text(json.dumps(meta))
    assert main([*args, "--output", str(tmp_path / "o")]) == 1
    assert "instance.json: missing fields attributes" in capsys.readouterr().err


def test_a_featurizer_evaluated_away_from_its_layer_is_flagged(saved, tiny_city, tmp_path, caplog):
    from ravel_bench.featurizers import IdentityFeaturizer
    from ravel_bench.hub import save_featurizer

    model = tiny_city[0]
    featurizer = IdentityFeaturizer.full(
        model.config.hidden_size, layer=0, site="blocks.0.resid_post", n_layers=2
    )
    folder = save_featurizer(featurizer, tmp_path / "feat")
    args = ["evaluate", "--instance", str(saved / "instance"), "--featurizer", str(folder)]
    with caplog.at_level("WARNING", logger="ravel_bench"):
        assert main([*args, "--layer", "1", "--output", str(tmp_path / "o")]) == 0
    assert "was trained at blocks.0.resid_post and is evaluated at 1 too" in caplog.text


def test_evaluate_into_a_used_folder_removes_the_predictions_it_replaces(saved, tmp_path):
    out = tmp_path / "reused"
    common = ["-q", "evaluate", "--instance", str(saved / "instance"), "--featurizer", "full"]
    assert main([*common, "--layer", "all", "--output", str(out)]) == 0
    sweep = {p.name for p in out.glob("predictions*.parquet")}
    assert sweep == {f"predictions_layer_{k}.parquet" for k in ("embeddings", "0", "1")}
    (out / "notes.txt").write_text("mine")
    assert main([*common, "--layer", "1", "--output", str(out)]) == 0
    assert {p.name for p in out.glob("predictions*.parquet")} == {"predictions.parquet"}
    assert (
        json.loads((out / "results.json").read_text())["eval_config"]["site"]
        == "blocks.1.resid_post"
    )
    assert main([*common, "--layer", "0,1", "--output", str(out)]) == 0
    assert {p.name for p in out.glob("predictions*.parquet")} == {
        "predictions_layer_0.parquet",
        "predictions_layer_1.parquet",
    }
    assert (out / "notes.txt").read_text() == "mine"  # files of other tools are left alone
