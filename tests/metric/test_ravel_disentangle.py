"""The evaluate module: offline loading, add_batch, card doctests, and agreement with the library."""

import doctest
import inspect
from pathlib import Path

import evaluate
import pytest

from ravel_bench.scoring import disentangle_score

METRIC_DIR = Path(__file__).resolve().parents[2] / "metric" / "ravel_disentangle"

ROWS = {
    "predictions": [" Canada", " Canada", " Peru", " Asia", " French"],
    "references": [" Canada", " Canada", " Chile", " Europe", " French"],
    "target_attributes": ["Country"] * 5,
    "queried_attributes": ["Country", "Country", "Country", "Continent", "Language"],
    "templates": ["t1", "t1", "t2", "t3", "t4"],
}


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_DIR))


def test_compute_matches_library(metric):
    assert metric.compute(**ROWS) == disentangle_score(**ROWS)
    result = metric.compute(**ROWS)
    assert (result["cause"], result["isolate"], result["disentangle"]) == (0.5, 0.5, 0.5)


def test_templates_are_optional(metric):
    rows = {k: v for k, v in ROWS.items() if k != "templates"}
    result = metric.compute(**rows)
    assert result == disentangle_score(**rows)
    assert result["per_attribute"]["Country"]["cause"] == pytest.approx(2 / 3)


def test_token_ids(metric):
    result = metric.compute(
        predictions=[[11, 12, 13], [7]],
        references=[[11, 12], [8, 9]],
        target_attributes=["Country", "Country"],
        queried_attributes=["Country", "Continent"],
    )
    assert (result["cause"], result["isolate"]) == (1.0, 0.0)


def test_add_batch(metric):
    for start in range(0, 5, 2):
        metric.add_batch(**{k: v[start : start + 2] for k, v in ROWS.items()})
    assert metric.compute() == disentangle_score(**ROWS)


def test_load_by_name_from_inside_metric_folder(monkeypatch):
    monkeypatch.chdir(METRIC_DIR.parent)
    by_name = evaluate.load("ravel_disentangle")
    assert by_name.compute(**ROWS)["disentangle"] == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"references": ROWS["references"][:2]}, "references has 2 rows but predictions has 5"),
        ({"target_attributes": ["Country"] * 4 + [""]}, r"target_attributes\[4\] is ''"),
        ({"predictions": [" Canada", [1], " Peru", " Asia", " French"]}, "predictions mixes"),
        ({k: [] for k in ROWS}, "predictions is empty"),
    ],
)
def test_errors(metric, change, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(**{**ROWS, **change})


def test_compute_has_no_var_kwargs(metric):
    params = inspect.signature(type(metric)._compute).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)


def _run_doctests(text: str, name: str, globs: dict) -> None:
    test = doctest.DocTestParser().get_doctest(text, globs, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} has no examples"
    assert results.failed == 0, f"{name}: {results.failed} doctest failures"


def test_metric_card_examples(monkeypatch):
    monkeypatch.chdir(METRIC_DIR.parents[1])  # the card loads "metric/ravel_disentangle"
    _run_doctests((METRIC_DIR / "README.md").read_text(), "README.md", {})


def test_module_docstring_examples(metric):
    module = inspect.getmodule(type(metric))
    _run_doctests(
        module._KWARGS_DESCRIPTION, "ravel_disentangle", {"metric": metric, "evaluate": evaluate}
    )


def test_card_sections():
    card = (METRIC_DIR / "README.md").read_text()
    for section in (
        "## Metric Description",
        "## How to Use",
        "### Inputs",
        "### Output Values",
        "### Examples",
        "## Limitations and Bias",
        "## Citation",
    ):
        assert section in card
    assert (METRIC_DIR / "requirements.txt").read_text().splitlines()[-1] == "ravel-bench"
