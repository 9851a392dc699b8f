"""Release loading: exact values, known defects, and a clear error for each kind of bad input."""

import json
from pathlib import Path

import pytest

from ravel_bench import DataFormatError, SourceUnavailableError, load_release


def _load(path: Path) -> object:
    return json.loads(path.read_text())


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))


def test_release_values_from_tgz(release_tgz):
    release = load_release(release_tgz)
    city = release.types["city"]
    assert city.attributes == (
        "Continent",
        "Country",
        "Language",
        "Latitude",
        "Longitude",
        "Timezone",
    )
    assert city.entity_attributes["Aalborg"] == {
        "Continent": "Europe",
        "Country": "Denmark",
        "Language": "Danish",
        "Latitude": "57",
        "Longitude": "10",
        "Timezone": "Europe/Copenhagen",
    }
    assert city.entity_split["Aalborg"] in {"train", "val", "test"}
    assert sum(len(ts) for ts in city.attribute_templates.values()) == 273
    nobel = release.types["nobel_prize_winner"]
    assert nobel.entity_attributes["A. Michael Spence"]["Field"] == "Economics"
    assert release.types["verb"].entity_attributes["abandon"]["Past Tense"] == "abandoned"


def test_folder_and_tgz_give_the_same_release(release_tgz, extracted_release):
    a, b = load_release(release_tgz), load_release(extracted_release.parent)
    assert a.types == b.types


def test_known_defects_are_reported(release_tgz):
    defects = {(d.entity_type, d.kind): d for d in load_release(release_tgz).defects}
    assert set(defects) == {
        ("city", "mis_encoded_values"),
        ("nobel_prize_winner", "empty_entity"),
        ("nobel_prize_winner", "template_in_both_lists"),
        ("occupation", "attribute_without_values"),
        ("physical_object", "near_duplicate_values"),
        ("physical_object", "unit_values"),
    }
    empty = defects[("nobel_prize_winner", "empty_entity")].description
    assert "'Michael Houghton'" in empty and "'Satoshi &'" in empty
    both = defects[("nobel_prize_winner", "template_in_both_lists")].description
    assert both.startswith("15 strings") and "6 of them have conflicting splits" in both
    assert "'Gender Bias'" in defects[("occupation", "attribute_without_values")].description
    garbled = defects[("city", "mis_encoded_values")].description
    assert garbled.startswith("44 values look mis-encoded")


def test_missing_file(release_dir):
    (release_dir / "ravel_verb_prompt_to_split.json").unlink()
    with pytest.raises(DataFormatError, match=r"missing ravel_verb_prompt_to_split\.json"):
        load_release(release_dir)


def test_malformed_json(release_dir):
    path = release_dir / "ravel_city_entity_attributes.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(
        DataFormatError,
        match=r"ravel_city_entity_attributes\.json: malformed JSON at line 24, column 4",
    ):
        load_release(release_dir)


@pytest.mark.parametrize(
    ("template", "count"),
    [(" %s is a city in the country of", 1), (" The city is in", 0), (" %s and %s are in", 2)],
)
def test_template_placeholders(release_dir, template, count):
    path = release_dir / "ravel_city_attribute_to_prompts.json"
    prompts = _load(path)
    prompts["Country"].append(template)
    _dump(path, prompts)
    if count == 1:  # a well-formed extra template only fails for lacking a split
        with pytest.raises(DataFormatError, match="has no split"):
            load_release(release_dir)
        return
    with pytest.raises(
        DataFormatError,
        match=rf"ravel_city_attribute_to_prompts\.json: attribute 'Country': template .* has "
        rf"{count} '%s' placeholders; exactly one is needed",
    ):
        load_release(release_dir)


def test_wikipedia_template_placeholders(release_dir):
    path = release_dir / "wikipedia_occupation_entity_prompts.json"
    wiki = _load(path)
    wiki["no placeholder here"] = {"split": "train", "entity": None}
    _dump(path, wiki)
    with pytest.raises(
        DataFormatError, match=r"wikipedia_occupation_entity_prompts\.json: wikipedia"
    ):
        load_release(release_dir)


def test_entity_in_split_file_missing_from_attributes(release_dir):
    path = release_dir / "ravel_physical_object_entity_to_split.json"
    splits = _load(path)
    splits["Atlantis teapot"] = "train"
    _dump(path, splits)
    with pytest.raises(
        DataFormatError,
        match=r"ravel_physical_object_entity_to_split\.json: entity 'Atlantis teapot' is not in "
        r"ravel_physical_object_entity_attributes\.json",
    ):
        load_release(release_dir)


def test_unknown_split_value(release_dir):
    path = release_dir / "ravel_city_prompt_to_split.json"
    splits = _load(path)
    template = next(iter(splits))
    splits[template] = "dev"
    _dump(path, splits)
    with pytest.raises(
        DataFormatError,
        match=r"ravel_city_prompt_to_split\.json: .* has split 'dev'; expected one of train, val, test",
    ):
        load_release(release_dir)


def test_missing_source_path(tmp_path):
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        load_release(tmp_path / "nowhere.tgz")


def test_not_a_tar_archive(tmp_path):
    bogus = tmp_path / "data.tgz"
    bogus.write_bytes(b"this is not gzip")
    with pytest.raises(DataFormatError, match="not a readable tar archive"):
        load_release(bogus)


def test_unreachable_url():
    # Port 9 (discard) on loopback: refused at once, no traffic leaves the machine.
    with pytest.raises(
        SourceUnavailableError,
        match=r"cannot download the RAVEL release from http://127\.0\.0\.1:9/data\.tgz",
    ):
        load_release("http://127.0.0.1:9/data.tgz")
