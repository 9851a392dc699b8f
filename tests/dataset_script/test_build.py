"""The dataset repo folder: counts per config and split, exact values, card, determinism, errors."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml

from ravel_bench import ENTITY_TYPES, ConfigError, build_dataset_folder
from ravel_bench.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_SPLIT = {"train": "train", "val": "validation", "test": "test"}
ENTITY_COUNTS = {  # DESIGN.md section 2
    "city": (1787, 818, 947),
    "nobel_prize_winner": (460, 234, 234),
    "occupation": (388, 210, 201),
    "physical_object": (276, 150, 137),
    "verb": (510, 234, 242),
}


def _expected_counts(release_folder: Path, entity_type: str) -> dict[str, Counter]:
    """Counts per config and Hub split, computed straight from the JSON files."""

    def read(name: str) -> dict:
        return json.loads((release_folder / name).read_text())

    entities = Counter(
        HUB_SPLIT[s] for s in read(f"ravel_{entity_type}_entity_to_split.json").values()
    )
    prompts = Counter(
        HUB_SPLIT[s] for s in read(f"ravel_{entity_type}_prompt_to_split.json").values()
    )
    wiki = Counter(
        HUB_SPLIT[v["split"]] for v in read(f"wikipedia_{entity_type}_entity_prompts.json").values()
    )
    return {
        entity_type: entities,
        f"{entity_type}_prompt": prompts,
        f"{entity_type}_wikipedia": wiki,
    }


def _card_yaml(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("entity_type", ENTITY_TYPES)
def test_every_config_loads_offline_with_release_counts(
    built_dataset, extracted_release, entity_type
):
    expected = _expected_counts(extracted_release, entity_type)
    assert (
        tuple(expected[entity_type][s] for s in ("train", "validation", "test"))
        == ENTITY_COUNTS[entity_type]
    )
    for config, counts in expected.items():
        loaded = datasets.load_dataset(str(built_dataset), config)
        assert set(loaded) == {"train", "validation", "test"}
        assert {split: loaded[split].num_rows for split in loaded} == dict(counts), config


def test_city_train_has_1787_rows_and_exact_values(built_dataset):
    city = datasets.load_dataset(str(built_dataset), "city")
    assert city["train"].num_rows == 1787
    rows = {r["entity"]: r for split in city.values() for r in split}
    assert rows["Aalborg"]["Country"] == "Denmark"
    assert rows["Aalborg"]["Timezone"] == "Europe/Copenhagen"
    assert city["train"].column_names == [
        "entity",
        "Continent",
        "Country",
        "Language",
        "Latitude",
        "Longitude",
        "Timezone",
    ]
    prompts = datasets.load_dataset(str(built_dataset), "city_prompt")
    assert sum(prompts[s].num_rows for s in prompts) == 273
    assert all(t.count("%s") == 1 for s in prompts for t in prompts[s]["template"])
    wiki = datasets.load_dataset(str(built_dataset), "city_wikipedia")
    named = [e for s in wiki for e in wiki[s]["entity"] if e is not None]
    assert len(named) == 914  # the other 24 are null: fillable with any entity


def test_default_config_is_city(built_dataset):
    default = datasets.load_dataset(str(built_dataset))
    assert default["train"].num_rows == 1787
    assert "Country" in default["train"].column_names


def test_card_yaml(built_dataset):
    meta = _card_yaml(built_dataset)
    assert meta["license"] == "mit"
    names = [c["config_name"] for c in meta["configs"]]
    assert len(names) == 15 and len(set(names)) == 15
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["city"]
    for config in meta["configs"]:
        for entry in config["data_files"]:
            assert list(built_dataset.glob(entry["path"])), entry
    info = {i["config_name"]: i for i in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in info["verb"]["splits"]} == {
        "train": 510,
        "validation": 234,
        "test": 242,
    }
    card = (built_dataset / "README.md").read_text()
    assert "## Known issues" in card and "'Michael Houghton'" in card and "'Gender Bias'" in card
    assert "huang-etal-2024-ravel" in card
    assert (
        "| `city` | entity, Continent, Country, Language, Latitude, Longitude, Timezone | 1787 | 818 | 947 |"
        in card
    )


def test_build_is_deterministic(release_tgz, built_dataset, tmp_path):
    again = tmp_path / "again"
    build_dataset_folder(release_tgz, again)
    files_a = sorted(p.relative_to(built_dataset) for p in built_dataset.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 46  # 45 parquet files + README.md
    for rel in files_a:
        assert (built_dataset / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_refuses_to_overwrite_without_flag(release_tgz, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        build_dataset_folder(release_tgz, out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_release_leaves_existing_output_untouched(release_tgz, release_dir, tmp_path):
    out = tmp_path / "out"
    build_dataset_folder(release_tgz, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (release_dir / "ravel_city_entity_to_split.json").write_text("{not json")
    assert (
        main(["dataset", "build", "--source", str(release_dir), "--out", str(out), "--overwrite"])
        == 1
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "release"]  # no staging left


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "missing ravel_city_entity_to_split.json"),
        ("malformed", "ravel_city_entity_to_split.json: malformed JSON"),
        ("bad_split", "ravel_city_entity_to_split.json: 'Aalborg' has split 'holdout'"),
        ("unknown_entity", "entity 'Nowhere' is not in ravel_city_entity_attributes.json"),
        ("no_placeholder", "has 0 '%s' placeholders"),
        ("two_placeholders", "has 2 '%s' placeholders"),
    ],
)
def test_cli_bad_input_one_clear_line_and_no_output(
    release_dir, tmp_path, capsys, breakage, message
):
    split_file = release_dir / "ravel_city_entity_to_split.json"
    prompts_file = release_dir / "ravel_city_attribute_to_prompts.json"
    if breakage == "missing":
        split_file.unlink()
    elif breakage == "malformed":
        split_file.write_text('{"Aalborg": "train",')
    elif breakage in {"bad_split", "unknown_entity"}:
        splits = json.loads(split_file.read_text())
        if breakage == "bad_split":
            splits["Aalborg"] = "holdout"
        else:
            splits["Nowhere"] = "train"
        split_file.write_text(json.dumps(splits))
    else:
        prompts = json.loads(prompts_file.read_text())
        prompts["Country"][0] = " no entity here" if breakage == "no_placeholder" else "%s or %s"
        prompts_file.write_text(json.dumps(prompts))
    out = tmp_path / "out"
    code = main(["dataset", "build", "--source", str(release_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]


def test_cli_unreachable_url(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["dataset", "build", "--source", "http://127.0.0.1:9/data.tgz", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: cannot download the RAVEL release from http://127.0.0.1:9/data.tgz" in err
    assert "hint: download the release by hand" in err
    assert not out.exists()


def test_cli_usage_error_exit_code():
    assert main(["dataset", "build"]) == 2  # --out is required


def test_dataset_script_entry_point(release_tgz, tmp_path):
    out = tmp_path / "via_script"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "dataset_script" / "build.py"),
            "--source",
            str(release_tgz),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "city                              1787         818     947" in result.stdout
    assert (out / "city" / "train-00000-of-00001.parquet").is_file()
