"""The ``ravel-bench`` command line.

The CLI turns flags into library calls, renders the results and owns logging and exit codes:
0 ok, 1 error (one line plus a hint; traceback with ``RAVEL_BENCH_DEBUG=1``), 2 usage.
"""

import argparse
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Container, Sequence
from pathlib import Path

from ravel_bench import __version__
from ravel_bench.data import OFFICIAL_RELEASE_URL
from ravel_bench.dataset_repo import build_dataset_folder
from ravel_bench.errors import ConfigError, RavelBenchError

logger = logging.getLogger("ravel_bench")


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = build_dataset_folder(args.source, args.out, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    _out(f"RAVEL dataset repo written to {summary.out_dir}")
    _out(summary.format_table())
    _out(f"{len(summary.defects)} known release defects documented in README.md:")
    for d in summary.defects:
        _out(f"  - {d.entity_type}/{d.kind}: {d.description[:100]}")
    _out(f"size {summary.size_bytes / 1e6:.2f} MB, built in {elapsed:.1f} s")
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a usage error names the flag otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _number(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"{text} must be {'> 0' if positive else '>= 0'}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _number(text, positive=True)


def _non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _number(text, positive=False)


def _output_folder(path: str) -> Path:
    """``--output`` as a folder; refused before any work when it names an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a folder", hint="pass a folder")
    return out


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _build_instance(loaded, source: str, entity_type: str, show_progress: bool, **fields):
    """Build ``loaded``'s instance of ``entity_type`` with ``InstanceConfig`` ``fields``.

    A toy model knows only the facts it was trained on: unless ``fields`` choose attributes,
    only its attributes are queried, and always only its entities (both empty for other models).
    """
    from ravel_bench.data import load_release
    from ravel_bench.instance.build import InstanceConfig, build_instance

    release = load_release(source, (entity_type,)).types[entity_type]
    fields["attributes"] = fields.get("attributes") or loaded.known_attributes
    config = InstanceConfig(entity_type=entity_type, entities=loaded.known_entities, **fields)
    return build_instance(
        loaded.model,
        loaded.tokenizer,
        release,
        config,
        model_id=loaded.model_id,
        model_revision=loaded.revision,
        show_progress=show_progress,
    )


def _load_model(args: argparse.Namespace, model: str | None = None):
    """Load ``model`` (default ``--model``) with the command's dtype, device and revision."""
    from ravel_bench.models import load_model

    return load_model(
        model or args.model,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
        release_source=args.source,
        show_progress=not args.quiet,
    )


def _cmd_toy_model(args: argparse.Namespace) -> int:
    from ravel_bench.models import EMBEDDED_MODEL, TINY_EMBEDDED_MODEL, embedded_model_path

    start = time.perf_counter()
    name = TINY_EMBEDDED_MODEL if args.tiny else EMBEDDED_MODEL
    folder = embedded_model_path(name, args.source, show_progress=not args.quiet)
    _out(f"embedded model ready at {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_instance(args: argparse.Namespace) -> int:
    from ravel_bench.instance.repo import save_instance

    start = time.perf_counter()
    loaded = _load_model(args)
    attributes = tuple(a.strip() for a in args.attributes.split(",")) if args.attributes else ()
    instance = _build_instance(
        loaded,
        args.source,
        args.entity_type,
        not args.quiet,
        attributes=attributes,
        n_entities=args.n_entities,
        entity_pool=args.entity_pool,
        max_pairs_per_split=args.max_pairs,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = save_instance(instance, args.out, overwrite=args.overwrite)
    meta = instance.metadata
    _out(f"instance for {meta['model_id']} ({meta['entity_type']}) written to {out}")
    _out(
        f"{len(meta['entities'])} entities of {meta['n_candidates']}, "
        f"{len(meta['templates'])} templates, attributes {', '.join(meta['attributes'])}, "
        f"accuracy {meta['entity_accuracy']:.3f}"
    )
    for key, n in meta["pair_counts"].items():
        _out(f"  {key:<16}{n:>7} pairs")
    _out(f"built in {time.perf_counter() - start:.1f} s")
    return 0


def run_evaluation(
    loaded,
    instance,
    featurizer_spec: str,
    layers: list[int],
    setting: str,
    split: str,
    batch_size: int,
    seed: int,
    show_progress: bool,
) -> dict:
    """Evaluate one featurizer spec at each layer; return ``{layer name: EvalResult}``."""
    from ravel_bench.engine.blocks import hidden_size, layer_name
    from ravel_bench.evaluation import evaluate_featurizer
    from ravel_bench.featurizers import parse_featurizer_spec

    name = featurizer_spec.partition(":")[0]
    if name in ("noop", "full", "random") or not (
        Path(featurizer_spec).is_dir() or featurizer_spec.count("/") == 1
    ):
        featurizer = parse_featurizer_spec(featurizer_spec, hidden_size(loaded.model), seed=seed)
    else:  # a saved featurizer: a folder or a Hub repo id
        from ravel_bench.hub import check_compatible, load_featurizer

        featurizer = load_featurizer(featurizer_spec)
        check_compatible(featurizer, loaded.model, name=featurizer_spec)
        trained_at = featurizer.config.layer
        other = [layer_name(layer) for layer in layers if layer != trained_at]
        if featurizer.config.site and other:
            logger.warning(
                "%s was trained at %s and is evaluated at %s too: its features were found there, "
                "not at the other layers",
                featurizer_spec,
                featurizer.config.site,
                ", ".join(other),
            )
    return {
        layer_name(layer): evaluate_featurizer(
            loaded.model,
            loaded.tokenizer,
            instance,
            featurizer,
            layer,
            setting,
            split,
            batch_size=batch_size,
            show_progress=show_progress,
            config={"featurizer": featurizer_spec, "seed": seed},
        )
        for layer in layers
    }


def _remove_stale_predictions(out: Path, written: Container[Path]) -> None:
    """Delete the predictions an earlier ``evaluate`` into ``out`` wrote and this one did not
    (another layer or layer set): they would sit beside a ``results.json`` they do not match."""
    earlier = [*out.glob("predictions.parquet"), *sorted(out.glob("predictions_layer_*.parquet"))]
    for path in earlier:
        if path not in written:
            path.unlink()
            logger.info("removed %s, left by an earlier evaluation into %s", path.name, out)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ravel_bench.engine.blocks import decoder_blocks, parse_layers
    from ravel_bench.instance.repo import load_instance
    from ravel_bench.report import results_table, save_json, save_predictions

    out = _output_folder(args.output)
    instance = load_instance(args.instance)
    instance_model = instance.metadata["model_id"]
    model_name = args.model or instance_model
    loaded = _load_model(args, model_name)
    if instance_model and loaded.model_id != instance_model:
        raise ConfigError(
            f"instance {args.instance} was built for {instance_model}, not {loaded.model_id}",
            hint="evaluate with the instance's model (omit --model) or build an instance for it",
        )
    layers = parse_layers(args.layer, len(decoder_blocks(loaded.model)))
    results = run_evaluation(
        loaded,
        instance,
        args.featurizer,
        layers,
        args.setting,
        args.split,
        args.batch_size,
        args.seed,
        not args.quiet,
    )
    if len(results) == 1:
        (result,) = results.values()
        save_json(result.to_json(), out / "results.json")
        written = {out / "predictions.parquet": result}
    else:
        save_json({"layers": {k: r.to_json() for k, r in results.items()}}, out / "results.json")
        written = {out / f"predictions_layer_{k}.parquet": r for k, r in results.items()}
    for path, result in written.items():
        save_predictions(result, path)
    _remove_stale_predictions(out, written)
    _out(f"{args.featurizer} on {instance.metadata['entity_type']} {args.setting}/{args.split}:")
    _out(results_table(results, key_header="layer"))
    _out(f"results written to {out / 'results.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ravel_bench.benchmark import (
        ALL_METHODS,
        BenchmarkConfig,
        choose_layer,
        held_run_record,
        run_benchmark,
        run_record,
    )
    from ravel_bench.data import load_release
    from ravel_bench.engine.blocks import EMBEDDINGS, decoder_blocks, hidden_size
    from ravel_bench.instance.repo import save_instance
    from ravel_bench.models import load_model
    from ravel_bench.report import results_table, save_json

    show = not args.quiet
    out = Path(args.out)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_model("toy", release_source=args.source, show_progress=show)
    stages["embedded model (build or cache)"] = time.perf_counter() - start

    start = time.perf_counter()
    instance = _build_instance(loaded, args.source, "city", show)
    save_instance(instance, out / "instance", overwrite=True)
    stages["city instance"] = time.perf_counter() - start

    n_layers = len(decoder_blocks(loaded.model))
    k = max(1, hidden_size(loaded.model) // 16)
    start = time.perf_counter()
    sweeps = {
        setting: run_evaluation(
            loaded, instance, "full", [EMBEDDINGS, *range(n_layers)], setting, "test", 64, 0, show
        )
        for setting in ("entity", "context")
    }
    layer, why = choose_layer(
        {s: [sweep[str(b)].scores["cause"] for b in range(n_layers)] for s, sweep in sweeps.items()}
    )
    all_results: dict[str, dict] = {}
    for setting, sweep in sweeps.items():
        rows = {}
        for spec in ("noop", f"random:{k}"):
            result = run_evaluation(loaded, instance, spec, [layer], setting, "test", 64, 0, show)
            rows[f"{spec} @ block {layer}"] = result[str(layer)]
        rows.update({f"full @ {name}": r for name, r in sweep.items()})
        all_results[setting] = {key: r.to_json() for key, r in rows.items()}
        _out(
            f"\n{setting} test ({len(instance.split(setting, 'test'))} pairs), city, "
            f"model {loaded.model_id}"
        )
        _out(results_table(rows, key_header="featurizer @ layer"))
    _out(f"\nbenchmark layer: {why}")
    stages["evaluations"] = time.perf_counter() - start
    save_json(
        {
            "model_id": loaded.model_id,
            "benchmark_layer": layer,
            "layer_choice": why,
            "results": all_results,
        },
        out / "results.json",
    )

    # The whole benchmark: every method for every attribute, at the same block and k.
    start = time.perf_counter()
    release = load_release(args.source, ("city",)).types["city"]
    bench_out, bench_config = out / "benchmark", BenchmarkConfig(layer=layer, k=k)
    if bench_out.is_dir() and held_run_record(bench_out) != run_record(
        loaded, instance, bench_config
    ):
        shutil.rmtree(bench_out)  # the demo's own results, of another model, instance or config
    run_benchmark(loaded, instance, release, bench_config, bench_out, show_progress=show)
    _out("\n" + (bench_out / "leaderboard.md").read_text())
    stages[f"benchmark ({len(ALL_METHODS)} methods x {len(instance.attributes)} attributes)"] = (
        time.perf_counter() - start
    )
    meta = instance.metadata
    _out(
        f"\ninstance: {len(meta['entities'])} entities, {len(meta['templates'])} templates, "
        + ", ".join(f"{key} {n}" for key, n in meta["pair_counts"].items())
    )
    _out("stage times: " + "; ".join(f"{name} {sec:.1f} s" for name, sec in stages.items()))
    _out(f"results written to {out / 'results.json'}")
    return 0


def _instance_for(args: argparse.Namespace, loaded, out: Path):
    """Load ``--instance``, or build one for the model (saved under ``out / "instance"``)."""
    from ravel_bench.instance.repo import load_instance, save_instance

    if args.instance:
        instance = load_instance(args.instance)
        if instance.metadata["model_id"] != loaded.model_id:
            raise ConfigError(
                f"instance {args.instance} was built for {instance.metadata['model_id']}, "
                f"not {loaded.model_id}",
                hint="pass the instance's model with --model, or omit --instance to build one",
            )
        return instance
    cached = out / "instance"
    if (cached / "instance.json").is_file():
        return load_instance(cached)
    instance = _build_instance(
        loaded, args.source, args.entity_type, not args.quiet, seed=args.seed
    )
    save_instance(instance, cached, overwrite=True)
    return instance


def _benchmark_config(args: argparse.Namespace, methods: tuple[str, ...], layer: int):
    from ravel_bench.benchmark import BenchmarkConfig
    from ravel_bench.training import TrainConfig

    train = TrainConfig(
        lr=args.lr,
        batch_size=args.train_batch_size,
        epochs=args.epochs,
        l1_coefficient=args.l1,
        seed=args.seed,
    )
    return BenchmarkConfig(
        methods=methods,
        layer=layer,
        k=args.dim,
        train=train,
        seed=args.seed,
        batch_size=args.batch_size,
        max_features=args.max_features,
        selection_c=args.selection_c,
        split=getattr(args, "split", "test"),  # `train` has no split: it does not evaluate
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from ravel_bench.benchmark import train_featurizer
    from ravel_bench.data import load_release
    from ravel_bench.engine.blocks import decoder_blocks, parse_layer

    out = _output_folder(args.output)
    loaded = _load_model(args)
    instance = _instance_for(args, loaded, out)
    if args.attribute not in instance.attributes:
        raise ConfigError(
            f"attribute {args.attribute!r} is not in the instance; it has {instance.attributes}"
        )
    layer = parse_layer(args.layer, len(decoder_blocks(loaded.model)))
    release = load_release(args.source, (args.entity_type,)).types[args.entity_type]
    config = _benchmark_config(args, (args.method,), layer)
    start = time.perf_counter()
    featurizer = train_featurizer(
        args.method, loaded, instance, release, args.attribute, config, not args.quiet
    )
    featurizer.save_pretrained(out)
    _out(
        f"{args.method} featurizer for {args.attribute} at {featurizer.config.site} "
        f"(k={featurizer.config.k}) trained in {time.perf_counter() - start:.1f} s, saved to {out}"
    )
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ravel_bench.benchmark import ALL_METHODS, run_benchmark
    from ravel_bench.data import load_release
    from ravel_bench.engine.blocks import decoder_blocks, parse_layer

    out = _output_folder(args.output)
    loaded = _load_model(args)
    instance = _instance_for(args, loaded, out)
    n_layers = len(decoder_blocks(loaded.model))
    layer = parse_layer(args.layer, n_layers) if args.layer else (n_layers - 1) // 2
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else ALL_METHODS
    release = load_release(args.source, (args.entity_type,)).types[args.entity_type]
    start = time.perf_counter()
    run_benchmark(
        loaded,
        instance,
        release,
        _benchmark_config(args, methods, layer),
        out,
        show_progress=not args.quiet,
    )
    _out((out / "leaderboard.md").read_text())
    _out(f"benchmark finished in {time.perf_counter() - start:.1f} s; results in {out}")
    return 0


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entity-type", default="city", help="entity type (default: city)")
    parser.add_argument("--instance", default=None, help="instance folder (default: build one)")
    parser.add_argument("--dim", type=_positive_int, default=8, help="k: subspace size (default 8)")
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=3e-3,
        help="learning rate (DAS/DBM family; default 3e-3)",
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=3, help="training epochs (default 3)"
    )
    parser.add_argument(
        "--train-batch-size", type=_positive_int, default=16, help="training batch size"
    )
    parser.add_argument(
        "--max-features",
        type=_positive_int,
        default=None,
        help="feature budget: PCA, SAE, DBM and MDBM swap at most this many features "
        "(default: no budget, as in RAVEL)",
    )
    parser.add_argument(
        "--l1",
        type=_non_negative_float,
        default=1e-2,
        help="DBM/MDBM: weight of the L1 penalty on the mean mask value (default 0.01; "
        "a reference coefficient on the mask's sum is this / d_model)",
    )
    parser.add_argument(
        "--selection-c",
        type=_positive_float,
        default=0.1,
        help="PCA/SAE: inverse L1 strength of the classifier that selects the features "
        "(default 0.1; smaller keeps fewer)",
    )
    parser.add_argument("--seed", type=int, default=0)
    _add_model(parser, default="toy")
    _add_source(parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``ravel-bench``."""
    parser = argparse.ArgumentParser(
        prog="ravel-bench", description="The RAVEL interpretability benchmark."
    )
    parser.add_argument("--version", action="version", version=f"ravel-bench {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log details (DEBUG)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dataset = commands.add_parser("dataset", help="the RAVEL release as a Hub dataset repo")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", metavar="ACTION", required=True
    )
    build = dataset_commands.add_parser(
        "build", help="convert the release into a dataset repo folder (parquet + card)"
    )
    _add_source(build)
    build.add_argument("--out", required=True, help="dataset repo folder to write")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    build.set_defaults(func=_cmd_dataset_build)

    toy = commands.add_parser("toy-model", help="build (or find) the embedded default model")
    toy.add_argument("--tiny", action="store_true", help="the 2-layer test variant")
    _add_source(toy)
    toy.set_defaults(func=_cmd_toy_model)

    inst = commands.add_parser("instance", help="build a model-specific RAVEL instance")
    _add_model(inst, default="toy")
    inst.add_argument("--entity-type", default="city", help="entity type (default: city)")
    inst.add_argument("--attributes", default="", help="comma list (default: all known ones)")
    inst.add_argument("--n-entities", type=int, default=400, help="entities kept (default 400)")
    inst.add_argument(
        "--entity-pool", type=int, default=None, help="query at most this many entities"
    )
    inst.add_argument("--max-pairs", type=int, default=None, help="cap on pairs per split")
    inst.add_argument("--seed", type=int, default=0)
    inst.add_argument("--out", required=True, help="instance folder to write")
    inst.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_source(inst)
    inst.set_defaults(func=_cmd_instance)

    ev = commands.add_parser("evaluate", help="score a featurizer on an instance split")
    ev.add_argument("--instance", required=True, help="instance folder")
    ev.add_argument(
        "--featurizer",
        required=True,
        help="noop, full, random:K (K random directions), or a saved featurizer folder/repo id",
    )
    ev.add_argument(
        "--layer", required=True, help="block index, 'embeddings', 'all', or a comma list"
    )
    ev.add_argument("--setting", choices=("entity", "context", "train"), default="entity")
    ev.add_argument("--split", choices=("val", "validation", "test", "train"), default="test")
    ev.add_argument("--output", required=True, help="folder for results.json and predictions")
    ev.add_argument("--seed", type=int, default=0, help="seed of random featurizers")
    _add_model(ev, default=None)
    _add_source(ev)
    ev.set_defaults(func=_cmd_evaluate)

    train = commands.add_parser("train", help="train one featurizer and save it")
    train.add_argument("--method", required=True, help="pca, sae, rlap, dbm, mdbm, das or mdas")
    train.add_argument("--attribute", required=True, help="target attribute, e.g. Country")
    train.add_argument("--layer", required=True, help="block index or 'embeddings'")
    train.add_argument("--output", required=True, help="folder to save the featurizer in")
    _add_training(train)
    train.set_defaults(func=_cmd_train)

    bench = commands.add_parser("benchmark", help="train and evaluate methods; write a leaderboard")
    bench.add_argument("--methods", default="", help="comma list (default: all ten)")
    bench.add_argument("--layer", default="", help="block index (default: the middle block)")
    bench.add_argument("--output", required=True, help="output folder (resumable)")
    bench.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="split the leaderboard scores (default test; val is for choosing hyperparameters)",
    )
    _add_training(bench)
    bench.set_defaults(func=_cmd_benchmark)

    demo = commands.add_parser(
        "demo", help="the main job: evaluations and the whole benchmark on the embedded model"
    )
    demo.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    _add_source(demo)
    demo.set_defaults(func=_cmd_demo)

    from ravel_bench.hub import add_push_parser

    add_push_parser(commands)
    return parser


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=os.environ.get("RAVEL_RELEASE", OFFICIAL_RELEASE_URL),
        help="RAVEL release folder, data.tgz or URL (default: $RAVEL_RELEASE or the official URL)",
    )


def _add_model(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--model",
        default=default,
        help="Hub id or folder of a causal LM; 'toy' is the embedded default"
        + ("" if default else " (default: the instance's model)"),
    )
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, help="prompts per forward pass"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ravel-bench`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help/--version
        return int(exc.code or 0)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ravel_bench").setLevel(level)
    try:
        return args.func(args)
    except RavelBenchError as exc:
        if os.environ.get("RAVEL_BENCH_DEBUG") == "1":
            raise
        sys.stderr.write(f"error: {exc}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
