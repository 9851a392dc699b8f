"""Run the whole benchmark and write ``benchmarks/results/results.md`` (and ``results.json``).

Usage: ``python -m benchmarks.run [--quick] [--out DIR] [--release PATH] [--threads N]``
(``make bench`` installs the ``bench`` extra and runs it). Stages, all on the same machine:

1. training: DAS and MDAS, ravel-bench's trainer against pyvene's ``IntervenableModel``
   forward, same examples, batches, initial rotation and optimizer, interleaved repetitions;
   the losses of the first steps are compared;
2. eval throughput: the trained DAS directions in both engines, same pairs and batch size,
   interleaved repetitions, every generated token compared;
3. scale: one eval per fresh process and side (time, peak RSS) over growing pair counts, on
   the toy-sized model and on a wider one;
4. training memory: the training stage's runs again, one fresh process per side (peak RSS).

The last line printed is the summary:
``eval speedup vs pyvene: X.XXx (agreement Y.Y%); train speedup vs pyvene: Z.ZZx``.
"""

import json
import logging
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks import sides
from benchmarks.entry import ROOT, base_parser, configure_logging
from benchmarks.measure import interleaved_times, median
from benchmarks.workload import (
    SHAPES,
    Workload,
    build_model,
    build_workload,
    distinct_sources,
    sources_run,
)
from ravel_bench.featurizers.baselines import RotationFeaturizer

logger = logging.getLogger("benchmarks")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of every stage.

    Args:
        n_entities: train cities the pairs are sampled over (about 24 pairs each).
        k: DAS directions.
        batch_size: pairs per batch in eval, both sides (ravel-bench's default).
        small_batch: a second eval batch size (the reference code's default, 16).
        eval_pairs: pairs of the interleaved eval at ``batch_size``.
        small_batch_pairs: pairs of the interleaved eval at ``small_batch``.
        eval_repeats: interleaved eval repetitions per side.
        train_batch: training batch (the reference's 16).
        das_examples: DAS cause examples (one epoch).
        mdas_examples: MDAS cause examples (plus 0.25 x as many isolate ones per other
            attribute).
        wide_examples: DAS examples on the wide model.
        train_repeats: interleaved training repetitions per side.
        loss_steps: first steps whose losses are compared; ``loss_rtol`` their tolerance.
        scale: ``(model shape, pairs)`` of the one-process-per-run measurements.
    """

    n_entities: int = 700
    k: int = 16
    batch_size: int = 64
    small_batch: int = 16
    eval_pairs: int = 4096
    small_batch_pairs: int = 1024
    eval_repeats: int = 5
    train_batch: int = 16
    das_examples: int = 1024
    mdas_examples: int = 512
    wide_examples: int = 96
    train_repeats: int = 5
    loss_steps: int = 10
    loss_rtol: float = 1e-4
    scale: tuple[tuple[str, int], ...] = (
        ("toy", 1024),
        ("toy", 4096),
        ("toy", 16384),
        ("wide", 1024),
        ("wide", 4096),
    )

    @property
    def training_runs(self) -> tuple[tuple[str, str, int], ...]:
        """``(model shape, method, examples)`` of the training stage, in order."""
        return (
            ("toy", "das", self.das_examples),
            ("toy", "mdas", self.mdas_examples),
            ("wide", "das", self.wide_examples),
        )


QUICK = BenchConfig(
    n_entities=60,
    eval_pairs=256,
    small_batch_pairs=128,
    eval_repeats=2,
    das_examples=64,
    mdas_examples=48,
    wide_examples=32,
    train_repeats=2,
    loss_steps=4,
    scale=(("toy", 256), ("toy", 512), ("wide", 128)),
)


# --- stages -------------------------------------------------------------------------------


def train_stage(
    workload: Workload,
    shape_key: str,
    method: str,
    n_examples: int,
    config: BenchConfig,
    repeats: int,
) -> tuple[dict, torch.Tensor]:
    """Interleaved training runs of both sides; returns the row and the trained directions."""
    shape = SHAPES[shape_key]
    model = build_model(shape, len(workload.tokenizer))
    instance = workload.instance()
    train_config = sides.das_config(method, config.train_batch, config.k, n_examples)
    examples, rotation, batches = sides.training_plan(
        instance, "Country", shape.d_model, train_config
    )
    intervenable = sides.pyvene_intervenable(model, shape.layer, config.k)
    results: dict[str, tuple] = {}

    def ravel() -> None:
        results["ravel"] = sides.ravel_train(
            model, workload.tokenizer, instance, "Country", shape.layer, train_config
        )

    def pyvene() -> None:
        results["pyvene"] = sides.pyvene_train(
            intervenable, workload.tokenizer, examples, rotation, batches, train_config.lr
        )

    times = interleaved_times({"ravel": ravel, "pyvene": pyvene}, repeats)
    featurizer, ours = results["ravel"]
    theirs = results["pyvene"]
    steps = len(batches)
    checked = min(config.loss_steps, steps)
    first_diff = _max_rel_diff(ours[:checked], theirs[:checked])
    row = {
        "method": method,
        "model": shape.name,
        "examples": len(examples),
        "steps": steps,
        "batch": config.train_batch,
        "ravel_steps_per_s": steps / median(times["ravel"]),
        "pyvene_steps_per_s": steps / median(times["pyvene"]),
        "ravel_seconds": times["ravel"],
        "pyvene_seconds": times["pyvene"],
        "loss_steps_checked": checked,
        "first_losses_ravel": ours[:checked],
        "first_losses_pyvene": theirs[:checked],
        "first_losses_max_rel_diff": first_diff,
        "all_losses_max_abs_diff": max(abs(a - b) for a, b in zip(ours, theirs, strict=True)),
        "losses_match": first_diff <= config.loss_rtol and len(ours) == len(theirs),
    }
    row["speedup"] = row["ravel_steps_per_s"] / row["pyvene_steps_per_s"]
    logger.info(
        "train %s %s: %.1f vs %.1f steps/s (%.2fx), first losses max rel diff %.1e",
        method,
        shape.name,
        row["ravel_steps_per_s"],
        row["pyvene_steps_per_s"],
        row["speedup"],
        first_diff,
    )
    return row, featurizer.directions.detach().clone()


def eval_stage(
    workload: Workload,
    shape_key: str,
    directions: torch.Tensor,
    n_pairs: int,
    batch_size: int,
    repeats: int,
    seed: int = 0,
) -> dict:
    """Interleaved eval runs of both sides on the same pairs; every generation compared."""
    shape = SHAPES[shape_key]
    pairs = workload.subset(n_pairs, seed=seed)
    model = build_model(shape, len(workload.tokenizer))
    featurizer = RotationFeaturizer.from_directions(directions, "das")
    intervenable = sides.pyvene_intervenable(model, shape.layer, directions.shape[0])
    sides.load_directions(intervenable, directions)
    outputs: dict[str, list[torch.Tensor]] = {"ravel": [], "pyvene": []}

    def ravel() -> None:
        outputs["ravel"].append(
            sides.ravel_eval(model, workload.tokenizer, pairs, shape.layer, featurizer, batch_size)
        )

    def pyvene() -> None:
        outputs["pyvene"].append(
            sides.pyvene_eval(intervenable, workload.tokenizer, pairs, batch_size)
        )

    ravel(), pyvene()  # warm-up (one-time initialization), and the outputs compared below
    times = interleaved_times({"ravel": ravel, "pyvene": pyvene}, repeats)
    ours, theirs = outputs["ravel"][0], outputs["pyvene"][0]
    stable = all(torch.equal(ours, o) for o in outputs["ravel"]) and all(
        torch.equal(theirs, o) for o in outputs["pyvene"]
    )
    plain = sides.plain_generate(model, workload.tokenizer, pairs, shape.layer, batch_size)
    row = {
        "model": shape.name,
        "pairs": len(pairs),
        "batch": batch_size,
        "distinct_sources": distinct_sources(pairs),
        "sources_run": sources_run(workload.tokenizer, pairs),
        "ravel_pairs_per_s": len(pairs) / median(times["ravel"]),
        "pyvene_pairs_per_s": len(pairs) / median(times["pyvene"]),
        "ravel_seconds": times["ravel"],
        "pyvene_seconds": times["pyvene"],
        "identical": int((ours == theirs).all(dim=1).sum()),
        "repeat_outputs_stable": stable,
        "changed_by_intervention": float((ours != plain).any(dim=1).float().mean()),
    }
    row["speedup"] = row["ravel_pairs_per_s"] / row["pyvene_pairs_per_s"]
    row["agreement"] = row["identical"] / row["pairs"]
    logger.info(
        "eval %s %d pairs, batch %d: %.0f vs %.0f pairs/s (%.2fx), agreement %.2f%%",
        shape.name,
        len(pairs),
        batch_size,
        row["ravel_pairs_per_s"],
        row["pyvene_pairs_per_s"],
        row["speedup"],
        100 * row["agreement"],
    )
    return row


def _max_rel_diff(ours: list[float], theirs: list[float]) -> float:
    """Largest ``|a - b| / max(|b|, 1)`` over paired losses; ``inf`` when the counts differ."""
    if len(ours) != len(theirs):
        return float("inf")
    return max(
        (abs(a - b) / max(abs(b), 1.0) for a, b in zip(ours, theirs, strict=True)), default=0.0
    )


def _both_sides(spec: dict, tmp_path: Path, index: int) -> dict[str, dict]:
    """Run ``spec`` for each side in a fresh process (:mod:`benchmarks.child`).

    The side that runs first alternates with ``index``, as in the interleaved stages. Returns
    ``{side: the child's JSON line and output tensors}``.
    """
    measured = {}
    for side in ("pyvene", "ravel") if index % 2 == 0 else ("ravel", "pyvene"):
        side_spec = {**spec, "side": side, "out": str(tmp_path / f"{side}.st")}
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.child", json.dumps(side_spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            label = f"{side} {spec['task']} {spec['shape']}"
            raise RuntimeError(f"{label}: {done.stderr[-2000:]}")
        measured[side] = json.loads(done.stdout.strip().splitlines()[-1])
        measured[side].update(load_file(side_spec["out"]))
    return measured


def _memory_columns(row: dict, measured: dict[str, dict]) -> None:
    """Copy each side's time, peak RSS and starting RSS from its child's result into ``row``;
    ``peak_reset`` says whether both children could reset their peak before the run."""
    for side in ("ravel", "pyvene"):
        row[f"{side}_seconds"] = measured[side]["seconds"]
        row[f"{side}_peak_rss"] = measured[side]["peak_rss"]
        row[f"{side}_rss_before"] = measured[side]["rss_before"]
    row["peak_reset"] = all(measured[side]["reset"] for side in ("ravel", "pyvene"))


def scale_stage(
    workload: Workload,
    directions: dict[str, torch.Tensor],
    config: BenchConfig,
    release: str,
    threads: int,
    seed: int = 0,
) -> list[dict]:
    """One eval per fresh process and side: time and peak RSS as the pair count grows."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for shape_key, n_pairs in config.scale:
            save_file({"directions": directions[shape_key].contiguous()}, tmp_path / "dirs.st")
            spec = {
                "task": "eval",
                "shape": shape_key,
                "n_pairs": n_pairs,
                "n_entities": config.n_entities,
                "batch_size": config.batch_size,
                "release": release,
                "directions": str(tmp_path / "dirs.st"),
                "threads": threads,
                "seed": seed,
            }
            measured = _both_sides(spec, tmp_path, len(rows))
            pairs = workload.subset(n_pairs, seed=seed)
            ours, theirs = measured["ravel"]["generated"], measured["pyvene"]["generated"]
            row = {
                "model": SHAPES[shape_key].name,
                "pairs": len(pairs),
                "distinct_sources": distinct_sources(pairs),
                "sources_run": sources_run(workload.tokenizer, pairs),
                "identical": int((ours == theirs).all(dim=1).sum()),
            }
            _memory_columns(row, measured)
            row["speedup"] = row["pyvene_seconds"] / row["ravel_seconds"]
            rows.append(row)
            logger.info(
                "scale %s %d pairs: %.1fs vs %.1fs (%.2fx), peak %.0f vs %.0f MiB, %d/%d identical",
                row["model"],
                row["pairs"],
                row["ravel_seconds"],
                row["pyvene_seconds"],
                row["speedup"],
                row["ravel_peak_rss"] / 2**20,
                row["pyvene_peak_rss"] / 2**20,
                row["identical"],
                row["pairs"],
            )
    return rows


def train_memory_stage(
    config: BenchConfig, release: str, threads: int, seed: int = 0
) -> list[dict]:
    """One training run per fresh process and side (the training stage's runs): peak RSS.

    The ravel-bench side's run includes everything its trainer holds: the source vectors it
    computes once and the prefix table's KV cache, both built inside the measured run.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for shape_key, method, n_examples in config.training_runs:
            spec = {
                "task": "train",
                "shape": shape_key,
                "method": method,
                "n_examples": n_examples,
                "k": config.k,
                "batch_size": config.train_batch,
                "n_entities": config.n_entities,
                "release": release,
                "threads": threads,
                "seed": seed,
            }
            measured = _both_sides(spec, tmp_path, len(rows))
            ours, theirs = measured["ravel"]["losses"], measured["pyvene"]["losses"]
            row = {
                "method": method,
                "model": SHAPES[shape_key].name,
                "steps": len(theirs),
                "losses_max_rel_diff": _max_rel_diff(ours.tolist(), theirs.tolist()),
            }
            _memory_columns(row, measured)
            rows.append(row)
            logger.info(
                "train memory %s %s: peak %.0f (+%.0f) vs %.0f (+%.0f) MiB",
                method,
                row["model"],
                row["ravel_peak_rss"] / 2**20,
                (row["ravel_peak_rss"] - row["ravel_rss_before"]) / 2**20,
                row["pyvene_peak_rss"] / 2**20,
                (row["pyvene_peak_rss"] - row["pyvene_rss_before"]) / 2**20,
            )
    return rows


# --- report -------------------------------------------------------------------------------


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f}"


def render(results: dict) -> str:
    """The markdown report."""
    env = results["environment"]
    lines = [
        "# ravel-bench vs pyvene: throughput",
        "",
        f"Measured by `make bench` on {env['machine']} ({env['cpus']} CPU cores, shared with "
        f"other jobs), {env['threads']} torch thread(s), torch {env['torch']}, transformers "
        f"{env['transformers']}, pyvene {env['pyvene']}; no GPU. Random-weight Llama models "
        "(float32), a word-level tokenizer, train-setting RAVEL city pairs; DAS with "
        f"k = {results['config']['k']}. Times are medians of interleaved repetitions.",
        "",
        "## Eval: pairs per second (3 greedy tokens, intervention on the prompt pass)",
        "",
        "| model | pairs | batch | ravel-bench pairs/s | pyvene pairs/s | speedup | "
        "identical generations | changed by the intervention |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["eval"]:
        lines.append(
            f"| {r['model']} | {r['pairs']:,} | {r['batch']} | {r['ravel_pairs_per_s']:,.0f} | {r['pyvene_pairs_per_s']:,.0f} | "
            f"{r['speedup']:.2f}x | {100 * r['agreement']:.1f}% | "
            f"{100 * r['changed_by_intervention']:.1f}% |"
        )
    lines += [
        "",
        "## Training: steps per second (one epoch, AdamW, same initial rotation and batches)",
        "",
        "| method | model | examples | steps | batch | ravel-bench steps/s | pyvene steps/s | "
        "speedup | first losses (max rel. diff) | all losses (max abs. diff) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["train"]:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['examples']:,} | {r['steps']} | {r['batch']} | "
            f"{r['ravel_steps_per_s']:.1f} | {r['pyvene_steps_per_s']:.1f} | {r['speedup']:.2f}x | "
            f"{r['loss_steps_checked']} steps, {r['first_losses_max_rel_diff']:.1e} | "
            f"{r['all_losses_max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"## Scale: one eval per fresh process (batch {results['config']['batch_size']})",
        "",
        "pyvene runs every pair's source through the whole model; ravel-bench runs each distinct "
        "source token sequence once (up to the entity's last token, up to layer L). "
        "Peak RSS is the process's peak resident memory during the eval (reset just before it); "
        "(+run) is how far it rose above the resident memory at the eval's start (imports, "
        "model, tokenizer and pairs, the same on both sides: both processes import pyvene).",
        "",
        "| model | pairs | source rows run by ravel-bench (reused) | ravel-bench s | pyvene s | "
        "speedup | ravel-bench peak MiB (+run) | pyvene peak MiB (+run) | identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["scale"]:
        reused = r["pairs"] - r["sources_run"]
        lines.append(
            f"| {r['model']} | {r['pairs']:,} | {r['sources_run']:,} ({reused:,}) | "
            f"{r['ravel_seconds']:.1f} | {r['pyvene_seconds']:.1f} | {r['speedup']:.2f}x | "
            f"{_mib(r['ravel_peak_rss'])} (+{_mib(r['ravel_peak_rss'] - r['ravel_rss_before'])}) | "
            f"{_mib(r['pyvene_peak_rss'])} (+{_mib(r['pyvene_peak_rss'] - r['pyvene_rss_before'])}) | "
            f"{100 * r['identical'] / r['pairs']:.1f}% |"
        )
    lines += [
        "",
        "## Training memory: one training run per fresh process",
        "",
        "The training stage's runs again, one process per side. Peak RSS and (+run) as above; "
        "ravel-bench's run includes its source vectors and prefix-table KV cache, built inside "
        "the run. The losses are compared with the other side's, step by step.",
        "",
        "| method | model | steps | ravel-bench s | pyvene s | ravel-bench peak MiB (+run) | "
        "pyvene peak MiB (+run) | losses (max rel. diff) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.get("train_memory", []):
        lines.append(
            f"| {r['method']} | {r['model']} | {r['steps']} | {r['ravel_seconds']:.1f} | "
            f"{r['pyvene_seconds']:.1f} | "
            f"{_mib(r['ravel_peak_rss'])} (+{_mib(r['ravel_peak_rss'] - r['ravel_rss_before'])}) | "
            f"{_mib(r['pyvene_peak_rss'])} (+{_mib(r['pyvene_peak_rss'] - r['pyvene_rss_before'])}) | "
            f"{r['losses_max_rel_diff']:.1e} |"
        )
    lines += ["", f"Total wall time: {results['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def summary_line(results: dict) -> str:
    """``eval speedup vs pyvene: X.XXx (agreement Y.Y%); train speedup vs pyvene: Z.ZZx``.

    The eval speedup is the first eval row's (the toy model at the default batch size), the
    agreement is over every pair compared in every eval and scale run, and the train speedup is
    the first training row's (DAS on the toy model).
    """
    runs = results["eval"] + results["scale"]
    agreement = sum(r["identical"] for r in runs) / sum(r["pairs"] for r in runs)
    return (
        f"eval speedup vs pyvene: {results['eval'][0]['speedup']:.2f}x "
        f"(agreement {100 * agreement:.1f}%); "
        f"train speedup vs pyvene: {results['train'][0]['speedup']:.2f}x"
    )


def environment(threads: int) -> dict:
    """Versions and machine, for the report."""
    import os
    from importlib.metadata import version

    import pyvene  # noqa: F401
    import transformers

    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyvene": version("pyvene"),
    }


def run(config: BenchConfig, release: str, out: Path, threads: int) -> dict:
    """Every stage; returns the results (also written under ``out``)."""
    import time

    start = time.perf_counter()
    torch.set_num_threads(threads)
    workload = build_workload(release, config.n_entities)
    logger.info("workload: %d pairs, vocabulary %d", len(workload.pairs), len(workload.tokenizer))
    train_rows, directions = [], {}
    for shape_key, method, n_examples in config.training_runs:
        repeats = config.train_repeats if shape_key == "toy" else min(config.train_repeats, 3)
        row, trained = train_stage(workload, shape_key, method, n_examples, config, repeats)
        train_rows.append(row)
        if method == "das":
            directions[shape_key] = trained
    eval_rows = [
        eval_stage(
            workload,
            "toy",
            directions["toy"],
            config.eval_pairs,
            config.batch_size,
            config.eval_repeats,
        ),
        eval_stage(
            workload,
            "toy",
            directions["toy"],
            config.small_batch_pairs,
            config.small_batch,
            config.eval_repeats,
        ),
    ]
    scale_rows = scale_stage(workload, directions, config, release, threads)
    train_memory_rows = train_memory_stage(config, release, threads)
    results = {
        "config": asdict(config),
        "environment": environment(threads),
        "train": train_rows,
        "eval": eval_rows,
        "scale": scale_rows,
        "train_memory": train_memory_rows,
        "wall_seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the summary line last."""
    parser = base_parser("python -m benchmarks.run", __doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    args = parser.parse_args(argv)
    configure_logging()
    config = QUICK if args.quick else BenchConfig()
    results = run(config, args.release, args.out, args.threads)
    print(summary_line(results))  # noqa: T201 - the benchmark's one line of output
    return 0


if __name__ == "__main__":
    sys.exit(main())
