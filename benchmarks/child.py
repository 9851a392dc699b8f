"""One measurement in a fresh process: wall time and peak memory of one side.

Run by :mod:`benchmarks.run` as ``python -m benchmarks.child '<json>'``. It rebuilds the
(deterministic) workload and model, resets the peak RSS, and then, by the spec's ``task``:

- ``"eval"`` (the default): loads the featurizer directions from a safetensors file, warms up
  on one batch, runs the eval once (timed) and writes the generated tokens to ``out``
  (safetensors);
- ``"train"``: one DAS/MDAS training run (:func:`benchmarks.sides.das_config`), timed, and
  writes every step's loss to ``out`` (safetensors).

It prints one JSON line: ``seconds``, ``peak_rss`` (during the warm-up and the run) and
``rss_before`` (before them). Both sides import pyvene, so their processes start from the
same resident memory.
"""

import gc
import json
import sys
import time
from collections.abc import Callable

import torch
from safetensors.torch import load_file, save_file

from benchmarks import sides
from benchmarks.measure import current_rss, peak_rss, reset_peak_rss
from benchmarks.workload import SHAPES, Workload, build_model, build_workload
from ravel_bench.featurizers.baselines import RotationFeaturizer


def _eval_task(spec: dict, workload: Workload, model: torch.nn.Module) -> Callable[[], dict]:
    """The eval of ``spec["n_pairs"]`` pairs, after a one-batch warm-up; returns the tokens."""
    pairs = workload.subset(spec["n_pairs"], seed=spec["seed"])
    shape = SHAPES[spec["shape"]]
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

    def measured() -> dict:
        run(pairs[:batch_size])  # warm-up: one-time initialization stays out of the time
        start = time.perf_counter()
        generated = run(pairs)
        return {"seconds": time.perf_counter() - start, "generated": generated.contiguous()}

    return measured


def _train_task(spec: dict, workload: Workload, model: torch.nn.Module) -> Callable[[], dict]:
    """One training run of ``spec["method"]`` on ``spec["n_examples"]`` Country examples."""
    shape = SHAPES[spec["shape"]]
    instance = workload.instance()
    config = sides.das_config(
        spec["method"], spec["batch_size"], spec["k"], spec["n_examples"], seed=spec["seed"]
    )
    if spec["side"] == "ravel":

        def run() -> list[float]:
            _, losses = sides.ravel_train(
                model, workload.tokenizer, instance, "Country", shape.layer, config
            )
            return losses
    else:
        examples, rotation, batches = sides.training_plan(
            instance, "Country", shape.d_model, config
        )
        intervenable = sides.pyvene_intervenable(model, shape.layer, config.k)

        def run() -> list[float]:
            return sides.pyvene_train(
                intervenable, workload.tokenizer, examples, rotation, batches, config.lr
            )

    def measured() -> dict:
        start = time.perf_counter()
        losses = run()
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "losses": torch.tensor(losses, dtype=torch.float64)}

    return measured


TASKS = {"eval": _eval_task, "train": _train_task}


def main(argv: list[str] | None = None) -> int:
    """Run one measurement described by the JSON in ``argv[0]``; print the result as JSON."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    torch.set_num_threads(spec["threads"])
    import pyvene  # noqa: F401 - imported on both sides: the same starting memory

    workload = build_workload(spec["release"], spec["n_entities"], seed=spec["seed"])
    model = build_model(SHAPES[spec["shape"]], len(workload.tokenizer), seed=spec["seed"])
    measured = TASKS[spec.get("task", "eval")](spec, workload, model)
    gc.collect()
    rss_before = current_rss()  # imports, model, tokenizer, pairs
    reset = reset_peak_rss()
    outcome = measured()
    peak = peak_rss()
    seconds = outcome.pop("seconds")
    save_file(outcome, spec["out"])
    result = {"seconds": seconds, "peak_rss": peak, "rss_before": rss_before, "reset": reset}
    print(json.dumps(result))  # noqa: T201 - the parent reads this line
    return 0


if __name__ == "__main__":
    sys.exit(main())
