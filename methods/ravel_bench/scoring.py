"""RAVEL's Cause / Isolate / Disentangle scores (DESIGN.md sections 1 and 4).

One row per intervened example. A row is a **cause** row when the attribute the base prompt asks
about (``queried``) is the attribute whose feature was intervened on (``target``), and an
**isolate** row otherwise. Its expected output is chosen by the caller: the source entity's label
for cause rows, the base label for isolate rows.

Averaging, with no rounding anywhere:

1. accuracy per (target, queried, template) group;
2. per (target, queried): the mean over templates of those accuracies (all rows of a pair form one
   group when templates are not given);
3. ``Cause(A)`` = that mean for queried == A; ``Isolate(A)`` = the mean over queried attributes
   ``B != A``; ``Disentangle(A) = (Cause(A) + Isolate(A)) / 2``;
4. overall values are means over target attributes that have both cause and isolate rows.

Sums are taken in sorted key order with :func:`math.fsum`, so permuting rows never changes a
result, not even in the last bit.

Example:
    >>> scores = disentangle_score(
    ...     predictions=[" Canada", " Asia", " Japan", " Europe"],
    ...     references=[" Canada", " Asia", " France", " Asia"],
    ...     target_attributes=["Country"] * 4,
    ...     queried_attributes=["Country", "Continent", "Country", "Continent"],
    ... )
    >>> scores["cause"], scores["isolate"], scores["disentangle"]
    (0.5, 0.5, 0.5)
    >>> scores["per_attribute"]["Country"]["n_cause"], scores["per_attribute"]["Country"]["n_isolate"]
    (2, 2)
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TypedDict

from ravel_bench.errors import DataFormatError

Output = str | Sequence[int]


class AttributeScore(TypedDict):
    """Scores of one target attribute; ``None`` where it has no cause or no isolate rows."""

    cause: float | None
    isolate: float | None
    disentangle: float | None
    n_cause: int
    n_isolate: int


class DisentangleResult(TypedDict):
    """Overall means over complete target attributes, per-attribute detail and warnings."""

    cause: float | None
    isolate: float | None
    disentangle: float | None
    per_attribute: dict[str, AttributeScore]
    warnings: list[str]


def string_match(prediction: str, reference: str) -> bool:
    """Return whether a generated string matches the expected one.

    Both are stripped of surrounding whitespace. Correct iff both are non-empty and the prediction
    equals the reference, or continues it after a character that is not a letter or digit
    (``"Paris, France"`` for ``"Paris"``), or is a prefix of it (a generation cut short).
    Case-sensitive.

    Example:
        >>> string_match(" Paris, France", "Paris"), string_match("Parisian", "Paris")
        (True, False)
        >>> string_match("United", " United States"), string_match("", "Paris")
        (True, False)
    """
    p, r = prediction.strip(), reference.strip()
    if not p or not r:
        return False
    if p == r or r.startswith(p):
        return True
    return p.startswith(r) and not p[len(r)].isalnum()


def token_match(prediction: Sequence[int], reference: Sequence[int]) -> bool:
    """Return whether generated token ids match the expected ones.

    Correct iff both are non-empty (as in :func:`string_match`: an empty reference expects
    nothing that a generation could match) and the prediction's first
    ``min(len(reference), len(prediction))`` ids equal the reference's.

    Example:
        >>> token_match([5, 6, 7], [5, 6]), token_match([5], [5, 6]), token_match([], [5])
        (True, True, False)
        >>> token_match([5, 6, 7], [])
        False
    """
    n = min(len(reference), len(prediction))
    return n > 0 and list(prediction[:n]) == list(reference[:n])


def _kind(value: object) -> str | None:
    if isinstance(value, str):
        return "string"
    if isinstance(value, Sequence) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        return "tokens"
    return None


def _check_kinds(name: str, values: Sequence[object]) -> str:
    """Return ``"string"`` or ``"tokens"``; raise if ``values`` mixes them or holds anything else."""
    first_of: dict[str, int] = {}
    for i, value in enumerate(values):
        kind = _kind(value)
        if kind is None:
            raise DataFormatError(
                f"{name}[{i}] must be a string or a list of token ids, found {value!r}"
            )
        first_of.setdefault(kind, i)
    if len(first_of) > 1:
        raise DataFormatError(
            f"{name} mixes strings (first at row {first_of['string']}) and token lists "
            f"(first at row {first_of['tokens']}); use one kind for every row"
        )
    return next(iter(first_of))


def _check_inputs(
    predictions: Sequence[Output],
    references: Sequence[Output],
    target_attributes: Sequence[str],
    queried_attributes: Sequence[str],
    templates: Sequence[str | None] | None,
) -> str:
    columns = {
        "predictions": predictions,
        "references": references,
        "target_attributes": target_attributes,
        "queried_attributes": queried_attributes,
    }
    if templates is not None:
        columns["templates"] = templates
    for name, column in columns.items():
        if column is None or isinstance(column, str | bytes):
            raise DataFormatError(f"{name} must be a list with one entry per row, found {column!r}")
    n = len(predictions)
    if n == 0:
        raise DataFormatError("predictions is empty: there is nothing to score")
    for name, column in columns.items():
        if len(column) != n:
            raise DataFormatError(
                f"{name} has {len(column)} rows but predictions has {n}; pass one entry per row"
            )
    for i, template in enumerate(templates or ()):
        if template is not None and not isinstance(template, str):
            raise DataFormatError(f"templates[{i}] must be a string, found {template!r}")
    for name in ("target_attributes", "queried_attributes"):
        for i, attribute in enumerate(columns[name]):
            if not isinstance(attribute, str) or not attribute.strip():
                raise DataFormatError(
                    f"{name}[{i}] is {attribute!r}; every row needs a non-empty attribute name"
                )
    kind = _check_kinds("predictions", predictions)
    ref_kind = _check_kinds("references", references)
    if kind != ref_kind:
        raise DataFormatError(
            f"predictions are {kind} but references are {ref_kind}; compare like with like"
        )
    return kind


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def disentangle_score(
    predictions: Sequence[Output],
    references: Sequence[Output],
    target_attributes: Sequence[str],
    queried_attributes: Sequence[str],
    templates: Sequence[str | None] | None = None,
) -> DisentangleResult:
    """Score intervened generations with RAVEL's Cause, Isolate and Disentangle.

    Args:
        predictions: per row, what the model generated: a string or a list of token ids.
        references: per row, the expected output, of the same kind as ``predictions``.
        target_attributes: per row, the attribute whose feature was intervened on.
        queried_attributes: per row, the attribute the base prompt asks about.
        templates: per row, the base template; accuracy is averaged per template first.
            ``None``: all rows of a (target, queried) pair form one group.

    Returns:
        ``{"cause", "isolate", "disentangle", "per_attribute", "warnings"}``; see the module
        docstring for the averaging. Overall values are ``None`` when no target attribute has
        both cause and isolate rows.

    Raises:
        DataFormatError: (a ValueError) columns of different lengths, empty input, a missing or
            empty attribute name, or predictions/references that mix strings and token lists.
    """
    kind = _check_inputs(predictions, references, target_attributes, queried_attributes, templates)
    match = string_match if kind == "string" else token_match
    row_templates = templates if templates is not None else [None] * len(predictions)

    # (target, queried, template) -> [correct, total]
    groups: dict[tuple[str, str, str | None], list[int]] = defaultdict(lambda: [0, 0])
    for pred, ref, target, queried, template in zip(
        predictions, references, target_attributes, queried_attributes, row_templates, strict=True
    ):
        counts = groups[(target, queried, template)]
        counts[0] += match(pred, ref)  # type: ignore[arg-type]
        counts[1] += 1

    # (target, queried) -> {template: accuracy}
    pair_template_acc: dict[tuple[str, str], dict[str | None, float]] = defaultdict(dict)
    pair_rows: dict[tuple[str, str], int] = defaultdict(int)
    for (target, queried, template), (correct, total) in groups.items():
        pair_template_acc[(target, queried)][template] = correct / total
        pair_rows[(target, queried)] += total

    def pair_accuracy(pair: tuple[str, str]) -> float:
        by_template = pair_template_acc[pair]
        keys = sorted(by_template, key=lambda t: (t is None, t or ""))
        return _mean([by_template[t] for t in keys])

    per_attribute: dict[str, AttributeScore] = {}
    warnings: list[str] = []
    for target in sorted({t for t, _ in pair_template_acc}):
        queried_all = sorted(q for t, q in pair_template_acc if t == target)
        others = [q for q in queried_all if q != target]
        cause = pair_accuracy((target, target)) if target in queried_all else None
        isolate = _mean([pair_accuracy((target, q)) for q in others]) if others else None
        disentangle = (cause + isolate) / 2 if cause is not None and isolate is not None else None
        per_attribute[target] = {
            "cause": cause,
            "isolate": isolate,
            "disentangle": disentangle,
            "n_cause": pair_rows.get((target, target), 0),
            "n_isolate": sum(pair_rows[(target, q)] for q in others),
        }
        if cause is None:
            warnings.append(
                f"target attribute {target!r} has no cause rows (queried == target); "
                "it is left out of the overall means"
            )
        if isolate is None:
            warnings.append(
                f"target attribute {target!r} has no isolate rows (queried != target); "
                "it is left out of the overall means"
            )

    complete = [a for a, s in per_attribute.items() if s["disentangle"] is not None]
    if not complete:
        warnings.append("no target attribute has both cause and isolate rows: no overall score")

    def overall(key: str) -> float | None:
        return _mean([per_attribute[a][key] for a in complete]) if complete else None  # type: ignore[literal-required]

    return {
        "cause": overall("cause"),
        "isolate": overall("isolate"),
        "disentangle": overall("disentangle"),
        "per_attribute": per_attribute,
        "warnings": warnings,
    }
