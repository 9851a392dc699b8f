"""One eval measurement in a fresh process: wall time and peak memory of one side.

Run by :mod:`benchmarks.run` as ``python -m benchmarks.child '<json>'``. It rebuilds the
(deterministic) workload and model, loads the featurizer directions from a safetensors file,
resets the peak RSS, warms up on one batch, runs the eval once (timed), writes the generated
tokens to ``out`` (safetensors) and prints one JSON line: ``seconds``, ``peak_rss`` (during the
warm-up and the run) and ``rss_before`` (before them).
Both sides import pyvene, so their processes start from the same resident memory.
"""

import gc
import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file

from benchmarks import sides
from benchmarks.measure import current_rss, peak_rss, reset_peak_rss
from benchmarks.workload import SHAPES, build_model, build_workload
from ravel_bench.featurizers.baselines import RotationFeaturizer


def main(argv: list[str] | None = None) -> int:
    """Run one measurement described by the JSON in ``argv[0]``; print the result as JSON."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    torch.set_num_threads(spec["threads"])
    import pyvene  # noqa: F401 - imported on both sides: the same starting memory

    workload = build_workload(spec["release"], spec["n_entities"], seed=spec["seed"])
    pairs = workload.subset(spec["n_pairs"], seed=spec["seed"])
    shape = SHAPES[spec["shape"]]
    model = build_model(shape, len(workload.tokenizer), seed=spec["seed"])
    directions = load_file(spec["directions"])["directions"]
    batch_size = spec["batch_size"]
    if spec["side"] == "ravel":
        featurizer = RotationFeaturizer.from_directions(directions, "das")

        def run(rows):
            return sides.ravel_eval(
                model, workload.tokenizer, rows, shape.layer, featurizer, batch_size
            )
    else:
        intervenable = sides.pyvene_intervenable(model, shape.layer, directions.shape[0])
        sides.load_directions(intervenable, directions)

        def run(rows):
            return sides.pyvene_eval(intervenable, workload.tokenizer, rows, batch_size)

    gc.collect()
    rss_before = current_rss()  # imports, model, tokenizer, pairs
    reset = reset_peak_rss()
    run(pairs[:batch_size])  # warm-up: one-time initialization stays out of the time
    start = time.perf_counter()
    generated = run(pairs)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    save_file({"generated": generated.contiguous()}, spec["out"])
    result = {"seconds": seconds, "peak_rss": peak, "rss_before": rss_before, "reset": reset}
    print(json.dumps(result))  # noqa: T201 - the parent reads this line
    return 0


if __name__ == "__main__":
    sys.exit(main())
