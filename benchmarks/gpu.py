"""Eval throughput on a GPU: Llama-2-7b's shapes in bf16, and the CPU benchmark's models.

Usage: ``python -m benchmarks.gpu [--quick] [--out DIR] [--release PATH] [--device cuda]``
(needs the ``bench`` extra and a CUDA device; ``--device cpu --quick`` is the smoke test).

For each model (random weights, :func:`benchmarks.workload.build_model`): the same pairs, batch
size, DAS directions (``k`` random orthonormal rows; throughput does not depend on what the
rows are) and 3 greedy tokens on both sides, interleaved repetitions, median pairs/s, every
generated token compared. Both sides compute the intervention in float32 (ravel-bench's
featurizers always do; pyvene's rotate layer casts its input to the float32 weight), so in
bf16 the remaining differences come from the engines' different batch shapes, which change
cuBLAS's reduction order.

The fraction of the GPU's matmul peak is the FLOPs one eval pass performs (counted by
``torch.utils.flop_counter.FlopCounterMode``: matrix products and attention) divided by its
median time, over the rate of a large bf16 matrix product measured in the same run.
"""

import contextlib
import copy
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import sides
from benchmarks.entry import base_parser, configure_logging
from benchmarks.measure import interleaved_times, median
from benchmarks.workload import (
    SHAPES,
    ModelShape,
    Workload,
    build_model,
    build_workload,
    distinct_sources,
    sources_run,
)
from ravel_bench.featurizers.baselines import random_subspace

logger = logging.getLogger("benchmarks")

# Llama-2-7b's shapes (meta-llama/Llama-2-7b-hf config.json): 32 blocks, d_model 4096, 32 heads
# (no grouped-query attention), MLP 11008, vocabulary 32000. The site is a middle block.
LLAMA2_7B = ModelShape(
    "llama-2-7b shapes", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, d_mlp=11008, layer=15
)
LLAMA2_VOCAB = 32000


@dataclass(frozen=True)
class GpuRun:
    """One eval comparison.

    Args:
        shape: the model (``"llama-2-7b"`` or a key of :data:`benchmarks.workload.SHAPES`).
        dtype: the model's dtype (``"bfloat16"`` or ``"float32"``).
        pairs: pairs evaluated per repetition.
        batch_size: pairs per batch, both sides.
        repeats: interleaved timed repetitions per side (after one warm-up each).
        count_flops: count the FLOPs of one pass per side and report the fraction of peak.
        attention_ab: also time ravel-bench under each of :data:`ABLATIONS` (changes not in
            the engine yet), interleaved with the two sides.
    """

    shape: str
    dtype: str
    pairs: int
    batch_size: int = 64
    repeats: int = 3
    count_flops: bool = False
    attention_ab: bool = False


RUNS = (
    GpuRun("llama-2-7b", "bfloat16", pairs=2048, count_flops=True, attention_ab=True),
    GpuRun("toy", "float32", pairs=4096, repeats=5),
    GpuRun("wide", "float32", pairs=4096, repeats=5),
)
QUICK_RUNS = (
    GpuRun("toy", "bfloat16", pairs=128, repeats=2, count_flops=True, attention_ab=True),
    GpuRun("toy", "float32", pairs=128, repeats=2),
)
K = 16


@contextlib.contextmanager
def _no_cudnn_attention() -> Iterator[None]:
    """Every attention backend but cuDNN's (``experiments/gpu_cudnn_attention_off.patch``)."""
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def _no_mask_skip_check() -> Iterator[None]:
    """transformers always builds the explicit attention mask: its check whether the mask can be
    skipped (``_ignore_causal_mask_sdpa``, which reads the padding mask on the device and so
    makes the host wait, on every decoding step) is answered "no" without looking. The outputs
    differ from the default only in batches without any padding. This bounds what passing
    ready-made masks would gain (``experiments/README.md``)."""
    import transformers.masking_utils as masking_utils

    original = getattr(masking_utils, "_ignore_causal_mask_sdpa", None)
    if original is None:  # another transformers version: nothing to switch off
        yield
        return
    masking_utils._ignore_causal_mask_sdpa = lambda *args, **kwargs: False
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = original


# ravel-bench run under each of these, interleaved with the two sides: {name: (label, context)}.
ABLATIONS: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager]]] = {
    "ravel_no_cudnn": ("cuDNN's attention backend off", _no_cudnn_attention),
    "ravel_no_mask_check": ("no mask-skip check (no wait per decoding step)", _no_mask_skip_check),
}


def _shape(key: str) -> ModelShape:
    return LLAMA2_7B if key == "llama-2-7b" else SHAPES[key]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an ``n x n x n`` bf16 matrix product on random data (3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _peak_memory(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _fits_in_float32(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether a float32 copy of ``model`` fits beside it on ``device`` (with 20% to spare)."""
    if device.type != "cuda":
        return True
    need = 1.2 * 4 * sum(p.numel() for p in model.parameters())  # bytes
    free, _ = torch.cuda.mem_get_info(device)
    if need > free:
        logger.info(
            "float32 reference skipped: needs %.1f GiB, %.1f free", need / 2**30, free / 2**30
        )
    return need <= free


def eval_run(workload: Workload, run: GpuRun, device: torch.device) -> dict:
    """Interleaved eval of both sides on one model; every generation compared."""
    shape = _shape(run.shape)
    dtype = getattr(torch, run.dtype)
    vocab = max(len(workload.tokenizer), LLAMA2_VOCAB if run.shape == "llama-2-7b" else 0)
    pairs = workload.subset(run.pairs)
    build_start = time.perf_counter()
    model = build_model(shape, vocab, device=device, dtype=dtype)
    _synchronize(device)
    build_seconds = time.perf_counter() - build_start
    featurizer = random_subspace(shape.d_model, K, seed=0).to(device)
    intervenable = sides.pyvene_intervenable(model, shape.layer, K)
    sides.load_directions(intervenable, featurizer.directions.cpu())
    sides_run = ["ravel", "pyvene", *(ABLATIONS if run.attention_ab else ())]
    outputs: dict[str, list[torch.Tensor]] = {side: [] for side in sides_run}
    peak: dict[str, int] = dict.fromkeys(sides_run, 0)

    def measured(side: str, fn) -> None:
        _reset_peak_memory(device)
        outputs[side].append(fn())
        _synchronize(device)
        peak[side] = max(peak[side], _peak_memory(device))

    def ravel() -> None:
        measured(
            "ravel",
            lambda: sides.ravel_eval(
                model, workload.tokenizer, pairs, shape.layer, featurizer, run.batch_size
            ),
        )

    def pyvene() -> None:
        measured(
            "pyvene",
            lambda: sides.pyvene_eval(intervenable, workload.tokenizer, pairs, run.batch_size),
        )

    def ablated(name: str) -> Callable[[], None]:
        def contender() -> None:
            with ABLATIONS[name][1]():
                measured(
                    name,
                    lambda: sides.ravel_eval(
                        model, workload.tokenizer, pairs, shape.layer, featurizer, run.batch_size
                    ),
                )

        return contender

    contenders = {"ravel": ravel, "pyvene": pyvene}
    if run.attention_ab:
        contenders.update({name: ablated(name) for name in ABLATIONS})
    for warm_up in contenders.values():
        warm_up()  # kernel selection, allocator; these outputs are the ones compared below
    times = interleaved_times(contenders, run.repeats)
    ours, theirs = outputs["ravel"][0], outputs["pyvene"][0]
    plain = sides.plain_generate(model, workload.tokenizer, pairs, shape.layer, run.batch_size)
    # The noise floor of "identical": the baseline against itself at another batch size.
    other_batch = sides.pyvene_eval(intervenable, workload.tokenizer, pairs, run.batch_size // 2)
    row = {
        **asdict(run),
        "model": shape.name,
        "params": sum(p.numel() for p in model.parameters()),
        "build_seconds": build_seconds,
        "pairs": len(pairs),
        "distinct_sources": distinct_sources(pairs),
        "sources_run": sources_run(workload.tokenizer, pairs),
        "ravel_pairs_per_s": len(pairs) / median(times["ravel"]),
        "pyvene_pairs_per_s": len(pairs) / median(times["pyvene"]),
        "ravel_seconds": times["ravel"],
        "pyvene_seconds": times["pyvene"],
        "ravel_peak_bytes": peak["ravel"],
        "pyvene_peak_bytes": peak["pyvene"],
        "identical": int((ours == theirs).all(dim=1).sum()),
        "identical_tokens": float((ours == theirs).float().mean()),
        "repeat_outputs_stable": all(torch.equal(ours, o) for o in outputs["ravel"])
        and all(torch.equal(theirs, o) for o in outputs["pyvene"]),
        "changed_by_intervention": float((ours != plain).any(dim=1).float().mean()),
        "pyvene_self_agreement": float((other_batch == theirs).all(dim=1).float().mean()),
    }
    row["speedup"] = row["ravel_pairs_per_s"] / row["pyvene_pairs_per_s"]
    row["agreement"] = row["identical"] / row["pairs"]
    for name in ABLATIONS if run.attention_ab else ():
        row[f"{name}_pairs_per_s"] = len(pairs) / median(times[name])
        row[f"{name}_seconds"] = times[name]
        row[f"{name}_peak_bytes"] = peak[name]
        row[f"{name}_vs_ravel_identical"] = float(
            (outputs[name][0] == ours).all(dim=1).float().mean()
        )
    if dtype != torch.float32 and _fits_in_float32(model, device):
        # How far each side's generations are from the same weights run in float32 (bf16 values
        # are exact in float32): rounding moves both sides, and a bug would move one more.
        reference_model = copy.deepcopy(model).float()
        reference = sides.ravel_eval(
            reference_model, workload.tokenizer, pairs, shape.layer, featurizer, run.batch_size
        )
        del reference_model
        for side, generated in (("ravel", ours), ("pyvene", theirs)):
            row[f"{side}_vs_float32"] = float((generated == reference).all(dim=1).float().mean())
    if run.count_flops:
        for side, fn in (("ravel", ravel), ("pyvene", pyvene)):
            with FlopCounterMode(display=False) as counter:
                fn()
            row[f"{side}_flops"] = counter.get_total_flops()
            row[f"{side}_flop_per_s"] = row[f"{side}_flops"] / median(times[side])
    logger.info(
        "eval %s %s, %d pairs, batch %d: %.0f vs %.0f pairs/s (%.2fx), agreement %.2f%%",
        shape.name,
        run.dtype,
        len(pairs),
        run.batch_size,
        row["ravel_pairs_per_s"],
        row["pyvene_pairs_per_s"],
        row["speedup"],
        100 * row["agreement"],
    )
    return row


def environment(device: torch.device) -> dict:
    """Versions and the device, for the report."""
    from importlib.metadata import version

    import transformers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "pyvene": version("pyvene"),
    }


def _section(title: str, columns: list[str], text_columns: int = 1) -> list[str]:
    """A report section's heading and table head (the first ``text_columns`` left-aligned)."""
    align = ["---"] * text_columns + ["---:"] * (len(columns) - text_columns)
    return ["", f"## {title}", "", f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|"]


def render(results: dict) -> str:
    """The markdown report."""
    env = results["environment"]
    peak = results["matmul_peak_flop_per_s"]
    lines = [
        "# ravel-bench vs pyvene on a GPU: eval throughput",
        "",
        f"Measured by `python -m benchmarks.gpu` on {env['device']} (torch {env['torch']}, CUDA "
        f"{env['cuda']}, transformers {env['transformers']}, pyvene {env['pyvene']}). "
        "Random-weight Llama models, a word-level tokenizer, train-setting RAVEL city pairs, "
        f"DAS with k = {K} random orthonormal directions, 3 greedy tokens; medians of "
        "interleaved repetitions after one warm-up each. An 8192 x 8192 x 8192 bf16 matrix "
        f"product ran at {peak / 1e12:,.0f} TFLOP/s in the same run (the peak below).",
        "",
        "| model | dtype | pairs | batch | ravel-bench pairs/s | pyvene pairs/s | speedup | "
        "identical generations (tokens) | pyvene vs itself at half the batch | changed by the "
        "intervention | peak GPU memory ravel-bench / pyvene (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["eval"]:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['pairs']:,} | {r['batch_size']} | "
            f"{r['ravel_pairs_per_s']:,.0f} | {r['pyvene_pairs_per_s']:,.0f} | "
            f"{r['speedup']:.2f}x | {100 * r['agreement']:.1f}% "
            f"({100 * r['identical_tokens']:.1f}%) | {100 * r['pyvene_self_agreement']:.1f}% | "
            f"{100 * r['changed_by_intervention']:.1f}% | "
            f"{r['ravel_peak_bytes'] / 2**30:.1f} / {r['pyvene_peak_bytes'] / 2**30:.1f} |"
        )
    rounded = [r for r in results["eval"] if "ravel_vs_float32" in r]
    if rounded:
        lines += _section(
            "Rounding: generations equal to the same weights run in float32",
            ["model", "ravel-bench", "pyvene"],
        )
        for r in rounded:
            lines.append(
                f"| {r['model']} ({r['dtype']}) | {100 * r['ravel_vs_float32']:.1f}% | "
                f"{100 * r['pyvene_vs_float32']:.1f}% |"
            )
    flops = [r for r in results["eval"] if "ravel_flops" in r]
    if flops:
        lines += _section(
            "Work and the fraction of the matmul peak",
            ["model", "side", "TFLOP per pass", "TFLOP/s", "fraction of the measured peak"],
            text_columns=2,
        )
        for r in flops:
            for side, name in (("ravel", "ravel-bench"), ("pyvene", "pyvene")):
                lines.append(
                    f"| {r['model']} ({r['dtype']}) | {name} | {r[f'{side}_flops'] / 1e12:,.1f} | "
                    f"{r[f'{side}_flop_per_s'] / 1e12:,.0f} | "
                    f"{100 * r[f'{side}_flop_per_s'] / peak:.1f}% |"
                )
    ablated = [
        (r, name, label)
        for r in results["eval"]
        for name, (label, _) in ABLATIONS.items()
        if f"{name}_pairs_per_s" in r
    ]
    if ablated:
        lines += _section(
            "ravel-bench with changes not in the engine yet (interleaved with the above)",
            [
                "model",
                "change",
                "ravel-bench pairs/s",
                "with the change",
                "speed",
                "identical generations",
            ],
            text_columns=2,
        )
        for r, name, label in ablated:
            lines.append(
                f"| {r['model']} ({r['dtype']}) | {label} | {r['ravel_pairs_per_s']:,.0f} | "
                f"{r[f'{name}_pairs_per_s']:,.0f} | "
                f"{r[f'{name}_pairs_per_s'] / r['ravel_pairs_per_s']:.2f}x | "
                f"{100 * r[f'{name}_vs_ravel_identical']:.1f}% |"
            )
    lines += ["", f"Total wall time: {results['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def run_all(runs: tuple[GpuRun, ...], release: str, out: Path, device: torch.device) -> dict:
    """Every run; the results are rewritten under ``out`` after each one (nothing is lost to a
    later failure or time limit)."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    workload = build_workload(release, 700)
    logger.info("workload: %d pairs, vocabulary %d", len(workload.pairs), len(workload.tokenizer))
    results = {
        "environment": environment(device),
        "matmul_peak_flop_per_s": matmul_peak(device) if device.type == "cuda" else float("nan"),
        "eval": [],
    }
    logger.info("bf16 matmul: %.0f TFLOP/s", results["matmul_peak_flop_per_s"] / 1e12)
    for run in runs:
        results["eval"].append(eval_run(workload, run, device))
        gc.collect()  # the run's model, before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results["wall_seconds"] = time.perf_counter() - start
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "gpu_results.md").write_text(render(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the report."""
    parser = base_parser("python -m benchmarks.gpu", __doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    args = parser.parse_args(argv)
    configure_logging()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu --quick")
    results = run_all(QUICK_RUNS if args.quick else RUNS, args.release, args.out, device)
    print(render(results))  # noqa: T201 - the report is the output
    return 0


if __name__ == "__main__":
    sys.exit(main())
