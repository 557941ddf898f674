"""One entry point for every data source a recipe accepts: Hub benchmarks, local files, offline VADER.

``load_task_dataset(name)`` dispatches through a registry instead of an if-chain, so a new source is
one ``@register_dataset`` away. Three kinds are built in:

* Hub benchmarks (``glue/sst2``, ``super_glue/rte|boolq|wic``, ``squad``) through
  ``datasets.load_dataset`` from their current Parquet repos (``datasets`` >= 4 no longer runs the
  old loading scripts). Offline, the error says what to do instead, rather than datasets' bare
  ``ConnectionError``.
* Local files (``train_file``/``validation_file``/``test_file``: csv, tsv, json, jsonl, parquet), the
  format taken from each file's extension; they take precedence over ``name``.
* ``vader`` / ``vader/<domain>``: the offline VADER sentences (:func:`hf_fedzo.data.vader.load_vader`).

Every loader returns a ``datasets.DatasetDict``. Column names are the source's own (SST-2's
``sentence``/``label``, BoolQ's ``question``/``passage``, ...); mapping them to prompts is the
job of ``hf_fedzo.tasks``. Note that GLUE/SuperGLUE ``test`` splits have hidden labels (``-1``).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_fedzo.data.errors import DataError
from hf_fedzo.data.vader import VADER_DOMAINS, load_vader
from hf_fedzo.registry import Registry

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = [
    "DATASET_SOURCES",
    "FILE_FORMATS",
    "DatasetSource",
    "DatasetUnavailableError",
    "HubDataset",
    "available_datasets",
    "load_local_files",
    "load_task_dataset",
    "register_dataset",
    "resolve_dataset_name",
]

DatasetLoader = Callable[..., "DatasetDict"]

OFFLINE_ADVICE = (
    "Pass your own data with --train_file/--validation_file (csv, tsv, json, jsonl or parquet), "
    "or use the bundled offline source `vader` (after `hf-fedzo prepare-assets`)."
)


class DatasetUnavailableError(ConnectionError):
    """A Hub dataset could not be fetched (typically: no network or ``HF_HUB_OFFLINE=1``)."""


@dataclass(frozen=True)
class DatasetSource:
    """A registered data source: ``loader(**kwargs) -> DatasetDict``."""

    name: str
    loader: DatasetLoader
    description: str
    aliases: tuple[str, ...] = ()


DATASET_SOURCES: Registry[DatasetSource] = Registry("dataset")
DATASET_ALIASES: Registry[str] = Registry("dataset alias")  # alias -> registered name


def register_dataset(
    name: str, *, description: str, aliases: tuple[str, ...] = (), overwrite: bool = False
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator adding ``loader`` to the registry under ``name`` (and ``aliases``), lower-cased.

    A name or alias already taken (as either) is refused unless ``overwrite=True``.
    """

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        key = name.lower()
        keys = [key, *(a.lower() for a in aliases)]
        taken = [k for k in keys if k in DATASET_SOURCES or k in DATASET_ALIASES]
        if taken and not overwrite:
            raise ValueError(f"Dataset name(s) {taken} are already registered; pass overwrite=True to replace them")
        DATASET_SOURCES.register(key, DatasetSource(key, loader, description, tuple(keys[1:])), overwrite=overwrite)
        for alias in keys[1:]:
            DATASET_ALIASES.register(alias, key, overwrite=overwrite)
        return loader

    return decorator


def available_datasets() -> list[str]:
    """Registered names (aliases excluded), sorted."""
    return sorted(DATASET_SOURCES)


def resolve_dataset_name(name: str) -> str:
    """Canonical registry key for ``name`` or an alias; ``ValueError`` with close matches otherwise."""
    key = name.strip().lower()
    key = DATASET_ALIASES.get(key, key)
    if key in DATASET_SOURCES:
        return key
    candidates = [*DATASET_SOURCES, *DATASET_ALIASES]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown dataset name={name!r}.{hint} Available: {', '.join(available_datasets())}; "
        "or pass local files with train_file=/validation_file= (--train_file/--validation_file)."
    )


# --------------------------------------------------------------------------------------------------
# Hub benchmarks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face Hub, loaded with ``datasets.load_dataset(path, config)``."""

    name: str
    path: str
    config: str | None = None

    def __call__(self, **kwargs: Any) -> DatasetDict:
        import datasets

        try:
            loaded = datasets.load_dataset(self.path, self.config, **kwargs)
        except (ConnectionError, FileNotFoundError) as err:
            where = f"Hub dataset {self.path}" + (f", config {self.config!r}" if self.config else "")
            raise DatasetUnavailableError(
                f"Could not load {self.name!r} ({where}): {type(err).__name__}: {err}. If this machine is "
                f"offline or cannot reach the Hub: {OFFLINE_ADVICE}"
            ) from err
        if not isinstance(loaded, datasets.DatasetDict):
            raise TypeError(
                f"load_dataset({self.path!r}) returned {type(loaded).__name__}; do not pass split= here."
            )
        return loaded


_HUB_DATASETS = (
    (HubDataset("glue/sst2", "nyu-mll/glue", "sst2"), "SST-2 sentiment (GLUE)", ("sst2", "sst-2")),
    (HubDataset("super_glue/rte", "aps/super_glue", "rte"), "RTE entailment (SuperGLUE)", ("rte",)),
    (HubDataset("super_glue/boolq", "aps/super_glue", "boolq"), "BoolQ yes/no QA (SuperGLUE)", ("boolq",)),
    (HubDataset("super_glue/wic", "aps/super_glue", "wic"), "WiC word sense (SuperGLUE)", ("wic",)),
    (HubDataset("squad", "rajpurkar/squad"), "SQuAD v1.1 extractive QA", ()),
)
for _source, _description, _aliases in _HUB_DATASETS:
    register_dataset(_source.name, description=_description, aliases=_aliases)(_source)


# --------------------------------------------------------------------------------------------------
# offline VADER
# --------------------------------------------------------------------------------------------------

register_dataset(
    "vader", description="VADER movie-review sentences (offline SST-2 stand-in)", aliases=("vader/movie",)
)(functools.partial(load_vader, "movie"))
for _domain in [*VADER_DOMAINS, "all"]:
    if _domain != "movie":
        register_dataset(f"vader/{_domain}", description=f"VADER sentences, domain {_domain!r} (offline)")(
            functools.partial(load_vader, _domain)
        )


# --------------------------------------------------------------------------------------------------
# local files
# --------------------------------------------------------------------------------------------------

#: file extension → (``datasets`` packaged builder, builder kwargs)
FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def _file_format(path: Path, argument: str) -> tuple[str, dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(
            f"{argument}={str(path)!r} has unsupported extension {suffix or '(none)'!r}; expected one of "
            f"{', '.join(FILE_FORMATS)} (--{argument})."
        )
    return FILE_FORMATS[suffix]


def _first_line(err: BaseException) -> str:
    """The most specific message of an exception chain (``datasets`` wraps the parser's error generically)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def check_text_file(path: Path, builder: str, argument: str) -> None:
    """Refuse, in one line naming the file and line, what ``datasets`` would fail on with a long traceback."""
    where = f"{argument}={str(path)!r}"
    if path.stat().st_size == 0:
        raise DataError(f"{where}: the file is empty")
    if builder == "parquet":
        return
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: line {number} is not UTF-8 text (byte {err.start} of the line)") from None
            if not line.strip():
                continue
            rows += 1
            if builder == "json" and path.suffix.lower() == ".jsonl":
                try:
                    json.loads(line)
                except ValueError as err:
                    raise DataError(f"{where}: line {number} is not valid JSON ({err})") from None
    if rows == 0:
        raise DataError(f"{where}: the file holds only blank lines")
    if builder == "csv" and rows == 1:
        raise DataError(f"{where}: the file has a header line but no rows")


def load_local_files(files: Mapping[str, str | os.PathLike[str]], **kwargs: Any) -> DatasetDict:
    """Load ``{split: path}`` into a ``DatasetDict``; each file's format comes from its extension.

    Files are loaded one by one so train and validation may differ in format (e.g. csv + jsonl).
    ``kwargs`` go to ``datasets.load_dataset`` (e.g. ``field="data"`` for nested json, ``cache_dir``).
    """
    import datasets

    if not files:
        raise ValueError("files must name at least one split, e.g. {'train': 'train.csv'}.")
    splits: dict[str, datasets.Dataset] = {}
    for split, raw_path in files.items():
        argument = f"{split}_file"
        path = Path(raw_path).expanduser()
        builder, builder_kwargs = _file_format(path, argument)
        if not path.is_file():
            raise FileNotFoundError(f"{argument}={str(path)!r} (--{argument}) is not an existing file.")
        check_text_file(path, builder, argument)
        try:
            splits[split] = datasets.load_dataset(
                builder, data_files={split: str(path)}, split=split, **{**builder_kwargs, **kwargs}
            )
        except Exception as err:  # DatasetGenerationError and friends: say which file and why, in one line
            raise DataError(f"{argument}={str(path)!r}: cannot be read as {builder}: {_first_line(err)}") from err
        if len(splits[split]) == 0:
            raise DataError(f"{argument}={str(path)!r}: the file holds no rows")
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


def load_task_dataset(
    name: str | None = None,
    train_file: str | os.PathLike[str] | None = None,
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> DatasetDict:
    """Load a task's data as a ``DatasetDict``.

    Local files win when any is given (``name`` then only names the task for the caller); otherwise
    ``name`` is looked up in the registry (see :func:`available_datasets`; aliases such as ``sst2``
    work). ``kwargs`` go to the source: ``datasets.load_dataset`` options for Hub and file sources,
    :func:`~hf_fedzo.data.vader.load_vader` options (``cache_dir``, ``seed``, ``min_abs_valence``,
    ...) for ``vader``.

    Raises:
        DatasetUnavailableError: a Hub dataset cannot be reached; the message says what to pass instead.
        AssetNotFoundError: ``vader`` was requested before ``hf-fedzo prepare-assets`` ran.
    """
    files = {
        split: path
        for split, path in (("train", train_file), ("validation", validation_file), ("test", test_file))
        if path is not None
    }
    if files:
        return load_local_files(files, **kwargs)
    if name is None:
        raise ValueError(
            "Pass name= (one of " + ", ".join(available_datasets()) + ") or local files with "
            "train_file=/validation_file= (--train_file/--validation_file)."
        )
    return DATASET_SOURCES[resolve_dataset_name(name)].loader(**kwargs)
