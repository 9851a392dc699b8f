"""Render and save evaluation results: fixed-width tables, results.json, predictions.parquet."""

import json
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ravel_bench.evaluation import EvalResult
from ravel_bench.files import write_text_atomic


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def results_table(results: Mapping[str, EvalResult], key_header: str = "run") -> str:
    """One row per result: Cause, Isolate, Disentangle, then one Disentangle per attribute."""
    attributes = sorted({a for r in results.values() for a in r.scores["per_attribute"]})
    width = max([len(key_header), *(len(k) for k in results)]) + 2
    header = f"{key_header:<{width}}{'cause':>8}{'isolate':>9}{'disent.':>9}" + "".join(
        f"{a[:10]:>12}" for a in attributes
    )
    lines = [header, "-" * len(header)]
    for key, result in results.items():
        s = result.scores
        per = s["per_attribute"]
        lines.append(
            f"{key:<{width}}  {_fmt(s['cause'])}   {_fmt(s['isolate'])}   {_fmt(s['disentangle'])}"
            + "".join(
                f"      {_fmt(per[a]['disentangle'] if a in per else None)}" for a in attributes
            )
        )
    return "\n".join(lines)


def save_predictions(result: EvalResult, path: Path) -> None:
    """Write one row per (pair, target attribute) as parquet."""
    rows = result.rows
    columns = list(rows[0]) if rows else []
    table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def save_json(obj: object, path: Path) -> None:
    """Write ``obj`` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
