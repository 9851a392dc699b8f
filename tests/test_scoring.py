"""disentangle_score: every matching and averaging rule, with hand-computed values."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravel_bench import DataFormatError
from ravel_bench.scoring import disentangle_score, string_match, token_match


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        (" Canada", "Canada", True),  # surrounding whitespace is stripped
        ("Canada ", " Canada", True),
        ("Paris, France", "Paris", True),  # continues after a non-alphanumeric character
        ("Paris (Europe)", "Paris", True),
        ("Parisian", "Paris", False),  # continues inside a word
        ("Paris2", "Paris", False),  # a digit counts as a word character
        ("Uni", "United States", True),  # generation cut short
        ("canada", "Canada", False),  # case-sensitive
        ("", "Canada", False),
        ("   ", "Canada", False),
        ("Canada", "", False),
        ("Japan", "Canada", False),
        ("Ü", "Über", True),
        ("Überlingen", "Über", False),  # unicode letters are letters
    ],
)
def test_string_match(prediction, reference, expected):
    assert string_match(prediction, reference) is expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], True),
        ([1, 2, 3], [1, 2], True),  # compare the first min(len) ids
        ([1], [1, 2, 3], True),
        ([1, 9], [1, 2, 3], False),
        ([2, 1], [1, 2], False),
        ([], [1], False),  # an empty prediction is never correct
    ],
)
def test_token_match(prediction, reference, expected):
    assert token_match(prediction, reference) is expected


def test_template_mean_differs_from_row_mean():
    # Cause rows of Country: template t1 has 3 rows (all correct), t2 has 1 row (wrong).
    # Per-template mean = (1 + 0) / 2 = 0.5; the row mean would be 3/4.
    # Isolate: Continent rows in one template, 1 of 2 correct -> 0.5; Language 1 of 1 -> 1.0.
    result = disentangle_score(
        predictions=["Canada", "Canada", "Canada", "Peru", "Asia", "Europe", "French"],
        references=["Canada", "Canada", "Canada", "Chile", "Asia", "Asia", "French"],
        target_attributes=["Country"] * 7,
        queried_attributes=["Country"] * 4 + ["Continent", "Continent", "Language"],
        templates=["t1", "t1", "t1", "t2", "t3", "t3", "t4"],
    )
    country = result["per_attribute"]["Country"]
    assert country == {
        "cause": 0.5,
        "isolate": 0.75,  # mean over queried attributes of (0.5, 1.0)
        "disentangle": 0.625,
        "n_cause": 4,
        "n_isolate": 3,
    }
    assert (result["cause"], result["isolate"], result["disentangle"]) == (0.5, 0.75, 0.625)
    assert result["warnings"] == []


def test_without_templates_all_rows_of_a_pair_are_one_group():
    result = disentangle_score(
        predictions=["Canada", "Canada", "Canada", "Peru", "Asia", "Europe", "French"],
        references=["Canada", "Canada", "Canada", "Chile", "Asia", "Asia", "French"],
        target_attributes=["Country"] * 7,
        queried_attributes=["Country"] * 4 + ["Continent", "Continent", "Language"],
    )
    assert result["per_attribute"]["Country"]["cause"] == 0.75  # 3 of 4 rows
    assert result["per_attribute"]["Country"]["isolate"] == 0.75


def test_isolate_is_mean_over_attributes_not_rows():
    # Continent: 1 row, correct (1.0). Language: 3 rows, none correct (0.0).
    # Mean over attributes: 0.5; a row mean would give 0.25.
    result = disentangle_score(
        predictions=["x", "Asia", "a", "b", "c"],
        references=["x", "Asia", "z", "z", "z"],
        target_attributes=["Country"] * 5,
        queried_attributes=["Country", "Continent", "Language", "Language", "Language"],
    )
    assert result["per_attribute"]["Country"]["isolate"] == 0.5


def test_overall_is_mean_over_target_attributes():
    result = disentangle_score(
        predictions=["A", "B", "no", "D"],
        references=["A", "B", "C", "D"],
        target_attributes=["Country", "Country", "Continent", "Continent"],
        queried_attributes=["Country", "Continent", "Continent", "Country"],
    )
    # Country: C 1, I 1 -> D 1. Continent: C 0, I 1 -> D 0.5.
    assert result["per_attribute"]["Continent"]["disentangle"] == 0.5
    assert (result["cause"], result["isolate"], result["disentangle"]) == (0.5, 1.0, 0.75)
    assert list(result["per_attribute"]) == ["Continent", "Country"]


def test_token_mode():
    result = disentangle_score(
        predictions=[[5, 6, 7], [5], [8, 8]],
        references=[[5, 6], [5, 6, 7], [8, 9]],
        target_attributes=["A", "A", "A"],
        queried_attributes=["A", "A", "B"],
    )
    assert result["per_attribute"]["A"]["cause"] == 1.0
    assert result["per_attribute"]["A"]["isolate"] == 0.0
    assert result["disentangle"] == 0.5


def test_attribute_without_isolate_rows_is_left_out_with_a_warning():
    result = disentangle_score(
        predictions=["A", "B", "C"],
        references=["A", "B", "x"],
        target_attributes=["Country", "Country", "Continent"],
        queried_attributes=["Country", "Continent", "Continent"],
    )
    continent = result["per_attribute"]["Continent"]
    assert continent == {
        "cause": 0.0,
        "isolate": None,
        "disentangle": None,
        "n_cause": 1,
        "n_isolate": 0,
    }
    assert (result["cause"], result["isolate"], result["disentangle"]) == (1.0, 1.0, 1.0)
    assert result["warnings"] == [
        "target attribute 'Continent' has no isolate rows (queried != target); "
        "it is left out of the overall means"
    ]


def test_no_complete_attribute_gives_none_overall():
    result = disentangle_score(
        predictions=["A"], references=["B"], target_attributes=["X"], queried_attributes=["Y"]
    )
    assert result["per_attribute"]["X"]["cause"] is None
    assert result["per_attribute"]["X"]["isolate"] == 0.0
    assert (result["cause"], result["isolate"], result["disentangle"]) == (None, None, None)
    assert len(result["warnings"]) == 2
    assert "no cause rows" in result["warnings"][0]


BASE = {
    "predictions": ["a", "b"],
    "references": ["a", "b"],
    "target_attributes": ["X", "X"],
    "queried_attributes": ["X", "Y"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"references": ["a"]}, "references has 1 rows but predictions has 2"),
        ({"queried_attributes": ["X"]}, "queried_attributes has 1 rows but predictions has 2"),
        ({"templates": ["t"]}, "templates has 1 rows but predictions has 2"),
        (
            {k: [] for k in BASE},
            "predictions is empty",
        ),
        ({"target_attributes": ["X", ""]}, r"target_attributes\[1\] is ''"),
        ({"queried_attributes": [None, "Y"]}, r"queried_attributes\[0\] is None"),
        ({"target_attributes": ["X", "  "]}, r"target_attributes\[1\] is '  '"),
        ({"predictions": ["a", [1, 2]]}, r"predictions mixes strings \(first at row 0\) and token"),
        ({"references": [[1], "b"]}, r"references mixes strings \(first at row 1\)"),
        (
            {"predictions": [[1], [2]], "references": ["a", "b"]},
            "predictions are tokens but references are string",
        ),
        ({"predictions": ["a", 3.5]}, r"predictions\[1\] must be a string or a list of token ids"),
        ({"predictions": "ab"}, "predictions must be a list"),
    ],
)
def test_errors_name_the_argument(change, message):
    with pytest.raises(ValueError, match=message) as info:
        disentangle_score(**{**BASE, **change})
    assert isinstance(info.value, DataFormatError)


row = st.tuples(
    st.sampled_from(["Paris", "Rome", " Rome", "Rom", "Tokyo, Japan", ""]),
    st.sampled_from(["Paris", "Rome", "Tokyo"]),
    st.sampled_from(["Country", "Continent", "Language"]),
    st.sampled_from(["Country", "Continent", "Language"]),
    st.sampled_from(["t1", "t2", "t3"]),
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=30), data=st.data())
def test_permuting_rows_never_changes_the_result(rows, data):
    shuffled = data.draw(st.permutations(rows))

    def score(rs):
        columns = list(zip(*rs, strict=True))
        return disentangle_score(*(list(c) for c in columns))

    assert score(shuffled) == score(rows)
