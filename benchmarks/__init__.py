"""Throughput benchmarks: ravel-bench's intervention engine against a pyvene-based baseline.

Run with ``make bench`` (or ``python -m benchmarks.run``); pyvene comes from the ``bench``
extra and is never a runtime dependency of ``ravel_bench``. Modules, one job each:

- ``workload``: seeded random-weight Llama models, a word-level tokenizer and base/source pairs
  sampled from the RAVEL release with the instance's pair sampler;
- ``orientation``: ravel-bench's ``[k, d_model]`` directions <-> pyvene's ``[d_model, k]`` weight;
- ``sides``: the two implementations of one eval pass and one training step;
- ``measure``: interleaved timing and peak memory in a fresh subprocess;
- ``run``: the whole benchmark, markdown tables and the summary line.
"""
