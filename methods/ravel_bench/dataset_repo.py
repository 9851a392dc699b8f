"""Write the RAVEL release as a Hugging Face dataset repo folder (no loading script).

Layout (DESIGN.md section 7)::

    OUT/
      README.md                                   dataset card with YAML `configs:`
      city/train-00000-of-00001.parquet           one row per entity
      city/validation-00000-of-00001.parquet
      city_prompt/train-00000-of-00001.parquet    attribute templates
      city_wikipedia/train-00000-of-00001.parquet Wikipedia source contexts
      ...                                          for all five entity types

``datasets.load_dataset(OUT, "city")`` then works offline. The whole release is validated
before anything is written, files are written into a temporary sibling folder that replaces
``OUT`` only at the end, and the same release always gives byte-identical files.
"""

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ravel_bench import __version__
from ravel_bench.data import ENTITY_TYPES, EntityTypeRelease, RavelRelease, load_release
from ravel_bench.errors import ConfigError

logger = logging.getLogger(__name__)

# Release split name -> Hub split name.
HUB_SPLITS: dict[str, str] = {"train": "train", "val": "validation", "test": "test"}
DEFAULT_CONFIG = "city"
CITATION = """@inproceedings{huang-etal-2024-ravel,
    title = "{RAVEL}: Evaluating Interpretability Methods on Disentangling Language Model Representations",
    author = "Huang, Jing and Wu, Zhengxuan and Potts, Christopher and Geva, Mor and Geiger, Atticus",
    booktitle = "Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)",
    year = "2024",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2024.acl-long.470",
    pages = "8669--8687",
}"""


@dataclass(frozen=True)
class ConfigTable:
    """One config of the dataset repo: its column names and rows per Hub split.

    Args:
        name: config name, e.g. ``"city_prompt"``.
        columns: column names; every column is a (nullable) string.
        splits: ``{hub split: list of rows}``, each row a tuple in ``columns`` order.
    """

    name: str
    columns: tuple[str, ...]
    splits: dict[str, list[tuple[str | None, ...]]]


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`build_dataset_folder` wrote.

    Args:
        out_dir: the dataset repo folder.
        counts: ``{config: {hub split: rows}}``.
        defects: the release defects documented in the card.
        size_bytes: total size of the folder in bytes.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    defects: list = field(default_factory=list)
    size_bytes: int = 0

    def format_table(self) -> str:
        """Render the counts as a fixed-width text table."""
        lines = [f"{'config':<30}{'train':>8}{'validation':>12}{'test':>8}"]
        for config, counts in self.counts.items():
            lines.append(
                f"{config:<30}{counts['train']:>8}{counts['validation']:>12}{counts['test']:>8}"
            )
        return "\n".join(lines)


def config_tables(release_type: EntityTypeRelease) -> list[ConfigTable]:
    """Turn one entity type's release files into its three configs, in release order."""
    t = release_type
    entity_rows: dict[str, list] = {s: [] for s in HUB_SPLITS.values()}
    for entity, values in t.entity_attributes.items():
        row = (entity, *(values[a] for a in t.attributes))
        entity_rows[HUB_SPLITS[t.entity_split[entity]]].append(row)
    prompt_rows: dict[str, list] = {s: [] for s in HUB_SPLITS.values()}
    for attribute, templates in t.attribute_templates.items():
        for template in templates:
            prompt_rows[HUB_SPLITS[t.template_split[template]]].append((template, attribute))
    wiki_rows: dict[str, list] = {s: [] for s in HUB_SPLITS.values()}
    for template, (split, entity) in t.wikipedia.items():
        wiki_rows[HUB_SPLITS[split]].append((template, entity))
    return [
        ConfigTable(t.entity_type, ("entity", *t.attributes), entity_rows),
        ConfigTable(f"{t.entity_type}_prompt", ("template", "attribute"), prompt_rows),
        ConfigTable(f"{t.entity_type}_wikipedia", ("template", "entity"), wiki_rows),
    ]


def _write_parquet(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> int:
    """Write ``rows`` as a string-typed parquet file; return the arrow table size in bytes."""
    schema = pa.schema([pa.field(c, pa.string()) for c in columns])
    table = pa.Table.from_pydict(
        {c: [r[i] for r in rows] for i, c in enumerate(columns)}, schema=schema
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return table.nbytes


def _card_metadata(tables: list[ConfigTable], sizes: dict[str, dict[str, int]]) -> dict:
    configs, infos = [], []
    for table in tables:
        entry: dict = {
            "config_name": table.name,
            "data_files": [
                {"split": s, "path": f"{table.name}/{s}-*.parquet"} for s in table.splits
            ],
        }
        if table.name == DEFAULT_CONFIG:
            entry["default"] = True
        configs.append(entry)
        infos.append(
            {
                "config_name": table.name,
                "features": [{"name": c, "dtype": "string"} for c in table.columns],
                "splits": [
                    {"name": s, "num_bytes": sizes[table.name][s], "num_examples": len(rows)}
                    for s, rows in table.splits.items()
                ],
                "dataset_size": sum(sizes[table.name].values()),
            }
        )
    return {
        "license": "mit",
        "language": ["en"],
        "pretty_name": "RAVEL",
        "task_categories": ["text-generation"],
        "tags": ["interpretability", "causal-abstraction", "ravel", "ravel-bench"],
        "size_categories": ["1K<n<10K"],
        "configs": configs,
        "dataset_info": infos,
    }


def render_dataset_card(
    tables: list[ConfigTable],
    sizes: dict[str, dict[str, int]],
    release: RavelRelease,
) -> str:
    """Render the dataset card (``README.md``) from ``hub_cards/dataset_card.md``."""
    header = yaml.safe_dump(
        _card_metadata(tables, sizes), sort_keys=False, allow_unicode=True, width=1000
    )
    template_text = resources.files("ravel_bench.hub_cards").joinpath("dataset_card.md").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template_text).render(
        yaml_header=header.rstrip("\n"),
        tables=tables,
        types=release.types,
        default_config=DEFAULT_CONFIG,
        defects=release.defects,
        citation=CITATION,
        version=__version__,
    )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_dataset_folder(
    source: str | Path | None,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    entity_types: tuple[str, ...] = ENTITY_TYPES,
) -> DatasetSummary:
    """Build the Hub dataset repo folder from the release.

    Args:
        source: release folder, ``data.tgz`` or URL (``None``: the official URL).
        out_dir: the folder to write; it must not exist (or be empty) unless ``overwrite``.
        overwrite: replace an existing ``out_dir``.
        entity_types: entity types to include (default: all five).

    Returns:
        Row counts per config and split, the documented defects and the folder size.

    Raises:
        ConfigError: ``out_dir`` exists and is not empty, and ``overwrite`` is false.
        DataFormatError, SourceUnavailableError: from :func:`ravel_bench.data.load_release`.
            Nothing is written in that case.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            f"output folder {out} already exists and is not empty",
            hint="pass --overwrite to replace it, or choose another --out",
        )
    release = load_release(source, entity_types)
    tables = [table for t in release.types.values() for table in config_tables(t)]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder is not
    try:
        sizes: dict[str, dict[str, int]] = {}
        for table in tables:
            sizes[table.name] = {
                split: _write_parquet(
                    staging / table.name / f"{split}-00000-of-00001.parquet", table.columns, rows
                )
                for split, rows in table.splits.items()
            }
        (staging / "README.md").write_text(render_dataset_card(tables, sizes, release))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts = {t.name: {s: len(rows) for s, rows in t.splits.items()} for t in tables}
    summary = DatasetSummary(out, counts, release.defects, _folder_size(out))
    logger.info(
        "dataset built: %d configs, %d files, %.1f kB in %s",
        len(tables),
        sum(len(t.splits) for t in tables),
        summary.size_bytes / 1e3,
        out,
    )
    return summary
