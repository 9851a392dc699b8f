"""RAVEL Disentangle: the Cause / Isolate / Disentangle score of interchange interventions.

A thin `evaluate` wrapper: the scoring logic is :func:`ravel_bench.scoring.disentangle_score`.
"""

import datasets
import evaluate

from ravel_bench.scoring import _check_inputs, disentangle_score

_DESCRIPTION = """\
RAVEL (Huang et al., 2024) scores an interpretability method by interchange interventions: the
feature that the method says carries a target attribute is swapped from a source run into a base
run. When the base prompt asks about the target attribute, the output should follow the source
entity (Cause); when it asks about another attribute, the output should stay the base entity's
(Isolate). Disentangle is their mean. Accuracy is averaged per base template, then per queried
attribute, then over target attributes. No rounding is applied.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`, or `list` of `list` of `int`): what the model generated on each
        intervened example, as text or as token ids.
    references (same kind as `predictions`): the expected output: the source entity's label for a
        cause row (queried == target), the base label for an isolate row.
    target_attributes (`list` of `str`): the attribute whose feature was intervened on.
    queried_attributes (`list` of `str`): the attribute the base prompt asks about.
    templates (`list` of `str`, optional): the base template of each row; accuracy is averaged
        over templates first. Without it, all rows of a (target, queried) pair form one group.
Returns:
    cause (`float`), isolate (`float`), disentangle (`float`): means over target attributes that
        have both cause and isolate rows (None if there is none).
    per_attribute (`dict`): per target attribute, `cause`, `isolate`, `disentangle` (None for a
        missing part) and the row counts `n_cause`, `n_isolate`.
    warnings (`list` of `str`): target attributes left out of the overall means, and why.
Examples:
    >>> metric = evaluate.load("ravel_disentangle")  # doctest: +SKIP
    >>> results = metric.compute(
    ...     predictions=[" Canada", " Asia", " Japan", " Europe"],
    ...     references=[" Canada", " Asia", " France", " Asia"],
    ...     target_attributes=["Country", "Country", "Country", "Country"],
    ...     queried_attributes=["Country", "Continent", "Country", "Continent"],
    ...     templates=[" %s is in the country of", " %s is on the continent of",
    ...                "%s, a city in", " %s is on the continent of"],
    ... )
    >>> results["cause"], results["isolate"], results["disentangle"]
    (0.5, 0.5, 0.5)
    >>> results["per_attribute"]["Country"]["n_cause"]
    2
"""

_CITATION = """\
@inproceedings{huang-etal-2024-ravel,
    title = "{RAVEL}: Evaluating Interpretability Methods on Disentangling Language Model Representations",
    author = "Huang, Jing and Wu, Zhengxuan and Potts, Christopher and Geva, Mor and Geiger, Atticus",
    booktitle = "Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)",
    year = "2024",
    url = "https://aclanthology.org/2024.acl-long.470",
}
"""


def _features(output: datasets.Value | datasets.Sequence) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": output,
            "references": output,
            "target_attributes": datasets.Value("string"),
            "queried_attributes": datasets.Value("string"),
            "templates": datasets.Value("string"),
        }
    )


def _with_templates(predictions, kwargs: dict) -> dict:
    """Fill an omitted `templates` column with one shared empty template.

    All rows of a (target, queried) pair then form one group, exactly as with `templates=None`
    in :func:`ravel_bench.scoring.disentangle_score`.
    """
    if kwargs.get("templates") is None and predictions is not None:
        kwargs = {**kwargs, "templates": [""] * len(predictions)}
    return kwargs


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RavelDisentangle(evaluate.Metric):
    """RAVEL's Cause, Isolate and Disentangle scores."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                _features(datasets.Value("string")),
                _features(datasets.Sequence(datasets.Value("int64"))),
            ],
            homepage="https://github.com/explanare/ravel",
            codebase_urls=["https://github.com/explanare/ravel"],
            reference_urls=["https://aclanthology.org/2024.acl-long.470"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of rows; `templates` may be omitted (see the module description)."""
        kwargs = _with_templates(predictions, kwargs)
        if predictions is not None:
            _check_inputs(
                predictions,
                references,
                kwargs.get("target_attributes"),
                kwargs.get("queried_attributes"),
                kwargs["templates"],
            )
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score all rows; `templates` may be omitted (see the module description)."""
        return super().compute(
            predictions=predictions, references=references, **_with_templates(predictions, kwargs)
        )

    def _compute(self, predictions, references, target_attributes, queried_attributes, templates):
        return dict(
            disentangle_score(
                predictions, references, target_attributes, queried_attributes, templates
            )
        )
