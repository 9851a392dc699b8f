"""ravel-bench: the RAVEL interpretability benchmark as Hugging Face artifacts.

The flat API re-exported here is what users import; submodules hold one job each.
"""

__version__ = "0.1.0"

from ravel_bench.data import (
    ENTITY_TYPES,
    OFFICIAL_RELEASE_URL,
    EntityTypeRelease,
    RavelRelease,
    ReleaseDefect,
    load_release,
)
from ravel_bench.dataset_repo import DatasetSummary, build_dataset_folder
from ravel_bench.errors import (
    ConfigError,
    DataFormatError,
    IncompatibleModelError,
    RavelBenchError,
    SourceUnavailableError,
)
from ravel_bench.hub import Intervenable, load_featurizer, load_intervenable, push, save_featurizer
from ravel_bench.scoring import disentangle_score, string_match, token_match

__all__ = [
    "ENTITY_TYPES",
    "OFFICIAL_RELEASE_URL",
    "ConfigError",
    "DataFormatError",
    "DatasetSummary",
    "EntityTypeRelease",
    "Intervenable",
    "IncompatibleModelError",
    "RavelBenchError",
    "RavelRelease",
    "ReleaseDefect",
    "SourceUnavailableError",
    "__version__",
    "build_dataset_folder",
    "disentangle_score",
    "load_featurizer",
    "load_intervenable",
    "load_release",
    "push",
    "save_featurizer",
    "string_match",
    "token_match",
]
