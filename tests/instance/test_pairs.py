"""Pair sampling on hand-made pools: split rules, dropped pairs, Wikipedia contexts, seeding."""

from collections import Counter

from ravel_bench.instance.pairs import OTHER, Cell, PairPools, distinguishable, sample_pairs

ENTITY_SPLIT = {"A": "train", "B": "train", "C": "train", "D": "train", "V": "val", "W": "val"}
TEMPLATES = {
    "%s country": ("Country", "train"),
    "%s lang": ("Language", "train"),
    "%s country?": ("Country", "val"),
}
WIKI = {
    "Wiki about %s": ("train", None),
    "Only B %s": ("train", "B"),
    "Val wiki %s": ("val", None),
    "%s country": ("train", None),  # also an attribute template: never a Wikipedia context
}
COUNTRY = {"A": "X", "B": "Y", "C": "Y", "D": "Z", "V": "X", "W": "Y"}


def _pools(correct=lambda t, e: True) -> PairPools:
    def cell(t: str, e: str) -> Cell:
        label = " " + COUNTRY[e] if "country" in t else " L" + e
        return Cell(label=label, correct=correct(t, e), key=(len(label), *label.encode()))

    cells = {(t, e): cell(t, e) for t in TEMPLATES for e in ENTITY_SPLIT}
    return PairPools(ENTITY_SPLIT, TEMPLATES, WIKI, cells)


def test_train_pairs():
    pairs = sample_pairs(_pools(), "train", "train", c=10, seed=0)
    assert len(pairs) == 8  # 4 train entities x 2 train templates; each has a differing label
    for p in pairs:
        assert p["label"] != p["inv_label"]
        assert p["entity"] != p["source_entity"]
        assert ENTITY_SPLIT[p["entity"]] == ENTITY_SPLIT[p["source_entity"]] == "train"
        assert TEMPLATES[p["base_template"]][1] == "train"
        assert p["input"] == p["base_template"] % p["entity"]
        assert p["source_input"] == p["source_template"] % p["source_entity"]
        if p["source_template"] in TEMPLATES:
            assert TEMPLATES[p["source_template"]][1] == "train"
            assert p["source_attribute"] == TEMPLATES[p["source_template"]][0]
        else:
            assert p["source_attribute"] == OTHER and p["source_label"] == ""
            assert WIKI[p["source_template"]][0] == "train"
            assert WIKI[p["source_template"]][1] in (None, p["source_entity"])
    assert {p["source_template"] for p in pairs} <= {*TEMPLATES, "Wiki about %s", "Only B %s"}


def test_entity_and_context_settings_use_held_out_parts():
    entity = sample_pairs(_pools(), "entity", "val", c=10, seed=0)
    assert {p["entity"] for p in entity} == {"V", "W"}
    assert all(p["source_entity"] in {"V", "W"} for p in entity)
    assert all(TEMPLATES[p["base_template"]][1] == "train" for p in entity)
    context = sample_pairs(_pools(), "context", "val", c=20, seed=0)
    assert {p["base_template"] for p in context} == {"%s country?"}
    assert all(ENTITY_SPLIT[p["entity"]] == "train" for p in context)
    assert all(p["source_template"] in {"%s country?", "Val wiki %s"} for p in context)


def test_pairs_need_correct_cells_and_a_differing_label():
    # Only A and B are known on the country template: A's label X, B's label Y.
    pools = _pools(lambda t, e: t != "%s country" or e in {"A", "B"})
    pairs = [
        p
        for p in sample_pairs(pools, "train", "train", c=10, seed=0)
        if p["base_template"] == "%s country"
    ]
    assert sorted((p["entity"], p["source_entity"]) for p in pairs) == [("A", "B"), ("B", "A")]


def test_label_flattening_weights():
    # Sources for base A (label X): B, C (label Y, frequent) and D (label Z, rare).
    # Weights 1/(c + count): Y -> 1/(0+2) each, Z -> 1/(0+1): D drawn with probability 1/2.
    draws = Counter()
    for seed in range(400):
        for p in sample_pairs(_pools(), "train", "train", c=0, seed=seed):
            if p["entity"] == "A" and p["base_template"] == "%s country":
                draws[p["source_entity"]] += 1
    assert abs(draws["D"] / 400 - 0.5) < 0.08
    assert abs(draws["B"] / 400 - 0.25) < 0.08


def test_labels_evaluation_cannot_tell_apart_give_no_pair():
    # B and C share D's first token: every key starts the same, so no source is usable for them.
    pools = _pools()
    cells = dict(pools.cells)
    for e in ("A", "B", "C", "D"):
        old = cells[("%s country", e)]
        cells[("%s country", e)] = Cell(old.label, True, (7,) if e == "A" else (7, 8))
    pairs = sample_pairs(
        PairPools(ENTITY_SPLIT, TEMPLATES, WIKI, cells), "train", "train", c=10, seed=0
    )
    assert [p for p in pairs if p["base_template"] == "%s country"] == []


def test_distinguishable():
    assert distinguishable((1, 2, 3), (1, 2, 4))
    assert not distinguishable((1, 2), (1, 2, 4))  # a prefix: evaluation compares 2 tokens
    assert not distinguishable((5,), (5,))


def test_seeded():
    a = sample_pairs(_pools(), "train", "train", c=10, seed=3)
    assert a == sample_pairs(_pools(), "train", "train", c=10, seed=3)
    assert len(sample_pairs(_pools(), "train", "train", c=10, seed=3, max_pairs=3)) == 3
