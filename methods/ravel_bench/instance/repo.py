"""Save and load instances as Hub dataset repo folders.

Layout::

    OUT/README.md                              card (hub_cards/instance_card.md) with YAML configs
    OUT/instance.json                          metadata: model, config, kept entities/templates
    OUT/{T}_train/train-00000-of-00001.parquet
    OUT/{T}_entity/{validation,test}-00000-of-00001.parquet
    OUT/{T}_context/{validation,test}-00000-of-00001.parquet

``datasets.load_dataset(OUT, "city_entity")`` loads a setting; :func:`load_instance` reads it all.
"""

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ravel_bench import __version__
from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.instance.build import RavelInstance
from ravel_bench.instance.pairs import SETTINGS

PAIR_FIELDS: tuple[str, ...] = (
    "input",
    "label",
    "source_input",
    "source_label",
    "inv_label",
    "base_template",
    "source_template",
    "entity",
    "source_entity",
    "attribute",
    "source_attribute",
)
HUB_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def _config_files(entity_type: str) -> dict[str, str]:
    """``{"setting/split": relative parquet path}``."""
    return {
        f"{setting}/{split}": f"{entity_type}_{setting}/{HUB_SPLIT[split]}-00000-of-00001.parquet"
        for setting, split in SETTINGS
    }


def _render_card(instance: RavelInstance, files: dict[str, str]) -> str:
    meta = instance.metadata
    configs: dict[str, list] = {}
    for key, path in files.items():
        setting, split = key.split("/")
        configs.setdefault(f"{meta['entity_type']}_{setting}", []).append(
            {"split": HUB_SPLIT[split], "path": path}
        )
    header = {
        "license": "mit",
        "language": ["en"],
        "tags": ["interpretability", "ravel", "ravel-bench", "ravel-instance"],
        "configs": [{"config_name": name, "data_files": df} for name, df in configs.items()],
    }
    per_attribute: dict[str, dict[str, int]] = {}
    for info in meta["templates"].values():
        counts = per_attribute.setdefault(info["attribute"], {"train": 0, "val": 0, "test": 0})
        counts[info["split"]] += 1
    text = resources.files("ravel_bench.hub_cards").joinpath("instance_card.md").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text).render(
        yaml_header=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip("\n"),
        meta=meta,
        per_attribute=per_attribute,
        n_entities=len(meta["entities"]),
        version=__version__,
    )


def save_instance(instance: RavelInstance, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``instance`` as a dataset repo folder (built beside ``out_dir``, then moved in)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output folder {out} already exists and is not empty",
            hint="pass --overwrite to replace it, or choose another --out",
        )
    files = _config_files(instance.metadata["entity_type"])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)
    try:
        schema = pa.schema([pa.field(f, pa.string()) for f in PAIR_FIELDS])
        for key, rel in files.items():
            rows = instance.pairs[key]
            table = pa.Table.from_pydict({f: [r[f] for r in rows] for f in PAIR_FIELDS}, schema)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, staging / rel, compression="zstd")
        (staging / "instance.json").write_text(
            json.dumps(instance.metadata, indent=1, ensure_ascii=False) + "\n"
        )
        (staging / "README.md").write_text(_render_card(instance, files))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_instance(folder: str | Path) -> RavelInstance:
    """Read an instance folder written by :func:`save_instance`.

    Raises:
        DataFormatError: a file is missing or a parquet file lacks a pair field.
    """
    folder = Path(folder)
    meta_path = folder / "instance.json"
    if not meta_path.is_file():
        raise DataFormatError(
            f"{folder} is not a RAVEL instance: {meta_path.name} is missing",
            hint="build one with `ravel-bench instance --out DIR`",
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{meta_path}: malformed JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise DataFormatError(f"{meta_path}: expected a JSON object")
    missing = [k for k in ("entity_type", "attributes") if k not in metadata]
    if missing:
        raise DataFormatError(
            f"{meta_path}: missing fields {', '.join(missing)}",
            hint="rebuild the instance with `ravel-bench instance --out DIR`",
        )
    pairs = {}
    for key, rel in _config_files(metadata["entity_type"]).items():
        path = folder / rel
        if not path.is_file():
            raise DataFormatError(f"{folder}: missing {rel}")
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(
                f"{path}: not a readable parquet file ({exc})",
                hint="the file is damaged; rebuild the instance or download it again",
            ) from exc
        missing = [f for f in PAIR_FIELDS if f not in table.column_names]
        if missing:
            raise DataFormatError(f"{path}: missing columns {missing}")
        pairs[key] = table.select(list(PAIR_FIELDS)).to_pylist()
    return RavelInstance(metadata=metadata, pairs=pairs)
