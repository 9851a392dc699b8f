"""Read and validate the official RAVEL release.

The release (explanare/ravel, MIT) is five JSON files per entity type (DESIGN.md section 2). It
can be given as a folder holding them (directly or under ``data/``), as the release ``data.tgz``,
or as an http(s) URL to that archive, downloaded once into the user cache. Everything is checked
before anything is returned: a malformed release raises :class:`DataFormatError` naming the file
and the problem. Known defects of the official release do not raise; they are returned as
:class:`ReleaseDefect` records (and logged) so that writers can document them.

Splits keep the release's names here: ``train``, ``val``, ``test``.
"""

import hashlib
import json
import logging
import os
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ravel_bench.errors import DataFormatError, SourceUnavailableError

logger = logging.getLogger(__name__)

ENTITY_TYPES: tuple[str, ...] = (
    "city",
    "nobel_prize_winner",
    "occupation",
    "physical_object",
    "verb",
)
OFFICIAL_RELEASE_URL = "https://github.com/explanare/ravel/raw/main/data.tgz"
RELEASE_SPLITS: tuple[str, ...] = ("train", "val", "test")
LENGTH_UNITS = frozenset({"mm", "cm", "m", "km"})
# Attributes with at most this many distinct values are treated as categorical when looking for
# near-duplicate values ("non-living thing" / "non-living things").
_CATEGORICAL_MAX_VALUES = 50
# Characters that appear when UTF-8 text was decoded as Mac Roman ("√°") or Latin-1 ("Ã¡").
_MOJIBAKE = re.compile(r"√|Ã.|Â")


def release_file_names(entity_type: str) -> dict[str, str]:
    """Return the five release file names of an entity type, keyed by their role."""
    return {
        "entity_attributes": f"ravel_{entity_type}_entity_attributes.json",
        "attribute_to_prompts": f"ravel_{entity_type}_attribute_to_prompts.json",
        "prompt_to_split": f"ravel_{entity_type}_prompt_to_split.json",
        "entity_to_split": f"ravel_{entity_type}_entity_to_split.json",
        "wikipedia": f"wikipedia_{entity_type}_entity_prompts.json",
    }


@dataclass(frozen=True)
class ReleaseDefect:
    """A known defect of the release that the loader found and handled.

    Args:
        entity_type: the entity type whose files have the defect.
        kind: a short stable key, e.g. ``"empty_entity"``.
        description: what is wrong, naming the entities, templates or values.
        action: what ravel-bench does about it.
    """

    entity_type: str
    kind: str
    description: str
    action: str


@dataclass(frozen=True)
class EntityTypeRelease:
    """The validated release files of one entity type.

    Args:
        entity_type: e.g. ``"city"``.
        attributes: attributes with ground-truth values, in release order (the columns).
        entity_attributes: ``{entity: {attribute: value}}``, release order.
        attribute_templates: ``{attribute: [template, ...]}``; may include attributes with no
            ground truth (occupation's ``"Gender Bias"``).
        template_split: ``{template: "train" | "val" | "test"}``.
        entity_split: ``{entity: "train" | "val" | "test"}``.
        wikipedia: ``{template: (split, entity or None)}``; source-only contexts.
        defects: known release defects found in these files.
    """

    entity_type: str
    attributes: tuple[str, ...]
    entity_attributes: dict[str, dict[str, str]]
    attribute_templates: dict[str, list[str]]
    template_split: dict[str, str]
    entity_split: dict[str, str]
    wikipedia: dict[str, tuple[str, str | None]]
    defects: tuple[ReleaseDefect, ...] = ()

    def template_attribute(self) -> dict[str, str]:
        """Return ``{template: attribute}`` over all attribute templates."""
        return {t: a for a, ts in self.attribute_templates.items() for t in ts}

    def other_contexts(self) -> dict[str, tuple[str, str | None]]:
        """The Wikipedia templates that can serve as "Other" source contexts.

        A string that is also an attribute template (15 Nobel strings of the release) queries an
        attribute, so it is no "Other" context, whether or not an instance keeps it as a
        template.

        Returns:
            ``{template: (split, entity or None)}``, a subset of :attr:`wikipedia`.
        """
        return {t: v for t, v in self.wikipedia.items() if t not in self.template_split}


@dataclass(frozen=True)
class RavelRelease:
    """The whole validated release.

    Args:
        source: where it was read from (path or URL), for provenance.
        types: one :class:`EntityTypeRelease` per entity type, in :data:`ENTITY_TYPES` order.
    """

    source: str
    types: dict[str, EntityTypeRelease] = field(default_factory=dict)

    @property
    def defects(self) -> list[ReleaseDefect]:
        """All known defects, entity type by entity type."""
        return [d for t in self.types.values() for d in t.defects]


def default_cache_dir() -> Path:
    """Return the ravel-bench cache folder (``$RAVEL_BENCH_CACHE`` or ``~/.cache/ravel_bench``)."""
    if env := os.environ.get("RAVEL_BENCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ravel_bench"


def download_release(url: str, cache_dir: Path | None = None, timeout_s: float = 60.0) -> Path:
    """Download the release archive at ``url`` once and return its cached path.

    Args:
        url: an http(s) URL of a ``data.tgz`` release archive.
        cache_dir: cache root; defaults to :func:`default_cache_dir`.
        timeout_s: network timeout in seconds.

    Raises:
        SourceUnavailableError: the URL cannot be fetched.
    """
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = (cache_dir or default_cache_dir()) / "releases" / key / "data.tgz"
    if target.is_file():
        logger.debug("release %s already cached at %s", url, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    logger.info("downloading RAVEL release from %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise SourceUnavailableError(
            f"cannot download the RAVEL release from {url}: {reason}"
        ) from exc
    partial.replace(target)
    return target


def _read_release_bytes(source: str | Path) -> tuple[dict[str, bytes], str]:
    """Return ``{file name: raw bytes}`` of the JSON files in ``source`` and a provenance string."""
    text = str(source)
    if re.match(r"^https?://", text):
        archive = download_release(text)
        files, _ = _read_release_bytes(archive)
        return files, text
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceUnavailableError(
            f"release source {path} does not exist",
            hint="pass a folder holding the RAVEL JSON files, the release data.tgz, or its URL",
        )
    if path.is_dir():
        folder = path / "data" if (path / "data").is_dir() else path
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}, str(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            files = {}
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name.endswith(".json") and not name.startswith("._"):
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        files[name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataFormatError(
            f"{path}: not a readable tar archive ({exc})",
            hint="pass the release data.tgz, or a folder holding its JSON files",
        ) from exc
    return files, str(path)


def _parse_json(name: str, raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{name}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{name}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc


def _expect_str_dict(name: str, obj: object, what: str) -> Mapping[str, object]:
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"{name}: expected a JSON object of {what}, found {type(obj).__name__}"
        )
    return obj


def _check_template(name: str, where: str, template: object) -> str:
    if not isinstance(template, str):
        raise DataFormatError(f"{name}: {where}: template must be a string, found {template!r}")
    n = template.count("%s")
    if n != 1:
        raise DataFormatError(
            f"{name}: {where}: template {template!r} has {n} '%s' placeholders; exactly one is needed"
        )
    try:
        template % "x"
    except (TypeError, ValueError) as exc:
        raise DataFormatError(
            f"{name}: {where}: template {template!r} cannot be filled with `template % entity` "
            f"({exc}); escape other '%' signs as '%%'"
        ) from exc
    return template


def _check_split(name: str, key: str, value: object) -> str:
    if value not in RELEASE_SPLITS:
        raise DataFormatError(
            f"{name}: {key!r} has split {value!r}; expected one of {', '.join(RELEASE_SPLITS)}"
        )
    return str(value)


def _parse_entity_type(
    entity_type: str, files: Mapping[str, bytes], source: str
) -> EntityTypeRelease:
    names = release_file_names(entity_type)
    for name in names.values():
        if name not in files:
            raise DataFormatError(
                f"{source}: missing {name} (entity type {entity_type!r})",
                hint="the release needs all 25 JSON files; re-download data.tgz",
            )
    parsed = {role: _parse_json(name, files[name]) for role, name in names.items()}

    # {entity: {attribute: value}}
    name = names["entity_attributes"]
    raw_attrs = _expect_str_dict(name, parsed["entity_attributes"], "entities")
    if not raw_attrs:
        raise DataFormatError(f"{name}: no entities")
    entity_attributes: dict[str, dict[str, str]] = {}
    attributes: tuple[str, ...] = ()
    for i, (entity, values) in enumerate(raw_attrs.items()):
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise DataFormatError(
                f"{name}: entity {entity!r} must map to an object of string values, found {values!r}"
            )
        if i == 0:
            attributes = tuple(values)
        elif set(values) != set(attributes):
            raise DataFormatError(
                f"{name}: entity {entity!r} has attributes {sorted(values)}; "
                f"the first entity has {sorted(attributes)}"
            )
        entity_attributes[entity] = {a: values[a] for a in attributes}

    # {attribute: [template, ...]}
    name = names["attribute_to_prompts"]
    raw_prompts = _expect_str_dict(name, parsed["attribute_to_prompts"], "attributes")
    attribute_templates: dict[str, list[str]] = {}
    seen_templates: dict[str, str] = {}
    for attribute, templates in raw_prompts.items():
        if not isinstance(templates, list):
            raise DataFormatError(
                f"{name}: attribute {attribute!r} must map to a list of templates"
            )
        checked = [_check_template(name, f"attribute {attribute!r}", t) for t in templates]
        for t in checked:
            if t in seen_templates:
                raise DataFormatError(
                    f"{name}: template {t!r} is listed under both {seen_templates[t]!r} and "
                    f"{attribute!r}"
                )
            seen_templates[t] = attribute
        attribute_templates[attribute] = checked
    missing_templates = [a for a in attributes if not attribute_templates.get(a)]
    if missing_templates:
        raise DataFormatError(f"{name}: attributes {missing_templates} have no templates")

    # {template: split}
    name = names["prompt_to_split"]
    raw_tsplit = _expect_str_dict(name, parsed["prompt_to_split"], "templates")
    template_split = {t: _check_split(name, t, s) for t, s in raw_tsplit.items()}
    for t in template_split:
        if t not in seen_templates:
            raise DataFormatError(
                f"{name}: template {t!r} is not in {names['attribute_to_prompts']}"
            )
    for t in seen_templates:
        if t not in template_split:
            raise DataFormatError(f"{name}: template {t!r} has no split")

    # {entity: split}
    name = names["entity_to_split"]
    raw_esplit = _expect_str_dict(name, parsed["entity_to_split"], "entities")
    entity_split = {e: _check_split(name, e, s) for e, s in raw_esplit.items()}
    for e in entity_split:
        if e not in entity_attributes:
            raise DataFormatError(
                f"{name}: entity {e!r} is not in {names['entity_attributes']}",
                hint="the split file and the attributes file must list the same entities",
            )
    for e in entity_attributes:
        if e not in entity_split:
            raise DataFormatError(f"{name}: entity {e!r} has no split")

    # {template: {"split": ..., "entity": name or null}}
    name = names["wikipedia"]
    raw_wiki = _expect_str_dict(name, parsed["wikipedia"], "templates")
    wikipedia: dict[str, tuple[str, str | None]] = {}
    for t, info in raw_wiki.items():
        _check_template(name, "wikipedia", t)
        if not isinstance(info, dict) or "split" not in info or "entity" not in info:
            raise DataFormatError(
                f"{name}: template {t!r} must map to {{'split': ..., 'entity': ...}}, found {info!r}"
            )
        entity = info["entity"]
        if entity is not None and entity not in entity_attributes:
            raise DataFormatError(
                f"{name}: template {t!r} names entity {entity!r}, which is not in "
                f"{names['entity_attributes']}"
            )
        wikipedia[t] = (_check_split(name, t, info["split"]), entity)

    defects = _find_defects(
        entity_type, attributes, entity_attributes, attribute_templates, template_split, wikipedia
    )
    for d in defects:
        logger.info("release defect (%s, %s): %s", d.entity_type, d.kind, d.description)
    return EntityTypeRelease(
        entity_type=entity_type,
        attributes=attributes,
        entity_attributes=entity_attributes,
        attribute_templates=attribute_templates,
        template_split=template_split,
        entity_split=entity_split,
        wikipedia=wikipedia,
        defects=tuple(defects),
    )


def _find_defects(
    entity_type: str,
    attributes: tuple[str, ...],
    entity_attributes: Mapping[str, Mapping[str, str]],
    attribute_templates: Mapping[str, list[str]],
    template_split: Mapping[str, str],
    wikipedia: Mapping[str, tuple[str, str | None]],
) -> list[ReleaseDefect]:
    """Detect the known kinds of release defects (DESIGN.md section 2)."""
    defects = []
    empty = [e for e, vs in entity_attributes.items() if all(v.strip() == "" for v in vs.values())]
    if empty:
        defects.append(
            ReleaseDefect(
                entity_type,
                "empty_entity",
                f"{len(empty)} entities have an empty value for every attribute: "
                + ", ".join(repr(e) for e in empty),
                "kept in the entity config with empty strings, faithful to the release; "
                "skip them when building a model-specific instance",
            )
        )
    partial = sorted(
        (e, a)
        for e, vs in entity_attributes.items()
        if e not in empty
        for a, v in vs.items()
        if v.strip() == ""
    )
    if partial:
        defects.append(
            ReleaseDefect(
                entity_type,
                "empty_value",
                f"{len(partial)} empty values: " + ", ".join(f"{e!r}/{a}" for e, a in partial[:10]),
                "kept as empty strings; skip them when building a model-specific instance",
            )
        )
    garbled = sorted(
        (e, a) for e, vs in entity_attributes.items() for a, v in vs.items() if _MOJIBAKE.search(v)
    )
    if garbled:
        defects.append(
            ReleaseDefect(
                entity_type,
                "mis_encoded_values",
                f"{len(garbled)} values look mis-encoded (UTF-8 read as Mac Roman or Latin-1, "
                "e.g. 'Aimar√°' for 'Aimará'): "
                + ", ".join(f"{e!r}/{a}={entity_attributes[e][a]!r}" for e, a in garbled[:5]),
                "values kept as released; a model will rarely produce them, so those cells "
                "mostly drop out of model-specific instances",
            )
        )
    no_truth = [a for a in attribute_templates if a not in attributes]
    for a in no_truth:
        defects.append(
            ReleaseDefect(
                entity_type,
                "attribute_without_values",
                f"attribute {a!r} has {len(attribute_templates[a])} templates but no ground-truth "
                "values in the entity attributes file",
                f"its templates are kept in the {entity_type}_prompt config; the entity config has "
                "no column for it and it cannot be a target attribute",
            )
        )
    both = [t for t in wikipedia if t in template_split]
    if both:
        conflicting = [t for t in both if wikipedia[t][0] != template_split[t]]
        defects.append(
            ReleaseDefect(
                entity_type,
                "template_in_both_lists",
                f"{len(both)} strings are both attribute templates and Wikipedia templates; "
                f"{len(conflicting)} of them have conflicting splits: "
                + "; ".join(
                    f"{t!r} (attribute split {template_split[t]}, wikipedia split {wikipedia[t][0]})"
                    for t in conflicting
                ),
                "each string stays in both configs with its own split, as released; a "
                "sampler must not use it as a Wikipedia ('Other') context for a split other "
                "than its attribute split",
            )
        )
    for a in attributes:
        values = {vs[a] for vs in entity_attributes.values() if vs[a]}
        if len(values) > _CATEGORICAL_MAX_VALUES:
            continue
        plural_pairs = sorted(v for v in values if v + "s" in values)
        if plural_pairs:
            defects.append(
                ReleaseDefect(
                    entity_type,
                    "near_duplicate_values",
                    f"attribute {a!r} mixes singular and plural values: "
                    + ", ".join(f"{v!r} / {v + 's'!r}" for v in plural_pairs),
                    "values kept as released; answer checks should treat a trailing 's' as equal",
                )
            )
        if values and values <= LENGTH_UNITS:
            defects.append(
                ReleaseDefect(
                    entity_type,
                    "unit_values",
                    f"attribute {a!r} holds length units ({', '.join(sorted(values))}) while its "
                    "templates ask for a size in words",
                    "values kept as released; answer checks must map size words (e.g. 'small') "
                    "to these units or skip the attribute",
                )
            )
    return defects


def load_release(
    source: str | Path | None = None, entity_types: tuple[str, ...] = ENTITY_TYPES
) -> RavelRelease:
    """Read and validate the RAVEL release.

    Args:
        source: a folder holding the JSON files (or a ``data/`` folder), the release ``data.tgz``,
            or an http(s) URL to it. ``None`` means :data:`OFFICIAL_RELEASE_URL`.
        entity_types: which entity types to read; each must be one of :data:`ENTITY_TYPES`.

    Returns:
        The validated release, with known defects listed per entity type.

    Raises:
        DataFormatError: a file is missing, malformed or inconsistent; the message names it.
        SourceUnavailableError: the source path or URL cannot be read.

    Example::

        release = load_release("../shared/ravel/data.tgz")
        release.types["city"].entity_attributes["Aalborg"]["Country"]  # 'Denmark'
    """
    unknown = [t for t in entity_types if t not in ENTITY_TYPES]
    if unknown:
        raise DataFormatError(f"unknown entity types {unknown}; expected some of {ENTITY_TYPES}")
    files, provenance = _read_release_bytes(OFFICIAL_RELEASE_URL if source is None else source)
    types = {t: _parse_entity_type(t, files, provenance) for t in entity_types}
    return RavelRelease(source=provenance, types=types)
