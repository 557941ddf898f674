"""Data sources and offline assets for hf_fedzo.

Importing this package is cheap and has no side effects: ``datasets``, ``torch`` and
``transformers`` are imported only when a loader or the GGUF conversion actually runs.
"""

from hf_fedzo.data.assets import (
    ASSETS,
    AssetNotFoundError,
    AssetSpec,
    AssetStatus,
    IntegrityError,
    PyPIArtifact,
    asset_path,
    default_cache_dir,
    resolve_cache_dir,
    smollm2_path,
    vader_archive_path,
)
from hf_fedzo.data.errors import DataError
from hf_fedzo.data.loaders import (
    DATASET_SOURCES,
    DatasetUnavailableError,
    available_datasets,
    load_local_files,
    load_task_dataset,
    register_dataset,
)
from hf_fedzo.data.prepare import pip_download, prepare_assets
from hf_fedzo.data.vader import (
    LABEL_NAMES,
    MOVIE_SPLIT_FINGERPRINT,
    REFERENCE_FINGERPRINTS,
    VADER_DOMAINS,
    load_vader,
    split_fingerprint,
)

__all__ = [
    "ASSETS",
    "DATASET_SOURCES",
    "LABEL_NAMES",
    "MOVIE_SPLIT_FINGERPRINT",
    "REFERENCE_FINGERPRINTS",
    "VADER_DOMAINS",
    "AssetNotFoundError",
    "AssetSpec",
    "AssetStatus",
    "DataError",
    "DatasetUnavailableError",
    "IntegrityError",
    "PyPIArtifact",
    "asset_path",
    "available_datasets",
    "default_cache_dir",
    "load_local_files",
    "load_task_dataset",
    "load_vader",
    "pip_download",
    "prepare_assets",
    "register_dataset",
    "resolve_cache_dir",
    "smollm2_path",
    "split_fingerprint",
    "vader_archive_path",
]
