"""load_task_dataset: registry dispatch, Hub sources (faked and really offline), local files, VADER."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from hf_fedzo.data import (
    DatasetUnavailableError,
    available_datasets,
    load_task_dataset,
    register_dataset,
    split_fingerprint,
)
from hf_fedzo.data import loaders as loaders_module
from hf_fedzo.registry import Registry
from tests.asset_fixtures import make_fake_vader_sdist

ROWS = [
    {"sentence": "a moving and beautiful story", "label": 1},
    {"sentence": "a dull, pointless mess", "label": 0},
    {"sentence": 'she said "great"', "label": 1},
]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        datasets.Dataset.from_list(rows).to_json(str(path), lines=False)
    elif suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_file_formats_from_extension(tmp_path: Path, suffix: str) -> None:
    train = _write(tmp_path / f"train{suffix}", ROWS)
    dsd = load_task_dataset(train_file=train, cache_dir=str(tmp_path / "hf"))  # keep ~/.cache clean
    assert list(dsd) == ["train"]
    assert dsd["train"]["sentence"] == [r["sentence"] for r in ROWS]
    assert list(dsd["train"]["label"]) == [1, 0, 1]


def test_mixed_formats_and_name_is_ignored_for_files(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.parquet", ROWS)
    validation = _write(tmp_path / "dev.JSONL", ROWS[:2])  # extension matching is case-insensitive
    test = _write(tmp_path / "test.csv", ROWS[:1])
    # Files win over the name (which then only names the task for the caller): no Hub access here.
    dsd = load_task_dataset(
        "glue/sst2",
        train_file=str(train),
        validation_file=validation,
        test_file=test,
        cache_dir=str(tmp_path / "hf"),
    )
    assert {k: v.num_rows for k, v in dsd.items()} == {"train": 3, "validation": 2, "test": 1}


def test_unknown_extension_names_the_argument(tmp_path: Path) -> None:
    bad = tmp_path / "dev.txt"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match=r"validation_file=.*dev\.txt.*'\.txt'.*\.csv.*--validation_file"):
        load_task_dataset(train_file=_write(tmp_path / "t.csv", ROWS), validation_file=bad)


def test_missing_file_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train_file=.*nope\.jsonl.*--train_file"):
        load_task_dataset(train_file=tmp_path / "nope.jsonl")


def test_no_name_and_no_files() -> None:
    with pytest.raises(ValueError, match=r"name=.*train_file="):
        load_task_dataset()


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown dataset name='super_glue/boolk'.*Did you mean 'super_glue/boolq'"
    ):
        load_task_dataset("super_glue/boolk")


def test_registry_contents() -> None:
    names = available_datasets()
    for expected in ("glue/sst2", "super_glue/rte", "super_glue/boolq", "super_glue/wic", "squad", "vader"):
        assert expected in names
    assert {"vader/amazon", "vader/tweets", "vader/nyt", "vader/all"} <= set(names)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("sst2", description="dup")(lambda: None)


@pytest.mark.parametrize(
    ("name", "path", "config"),
    [
        ("glue/sst2", "nyu-mll/glue", "sst2"),
        ("SST2", "nyu-mll/glue", "sst2"),
        ("super_glue/rte", "aps/super_glue", "rte"),
        ("boolq", "aps/super_glue", "boolq"),
        ("super_glue/wic", "aps/super_glue", "wic"),
        ("squad", "rajpurkar/squad", None),
    ],
)
def test_hub_names_dispatch_to_load_dataset(
    monkeypatch: pytest.MonkeyPatch, name: str, path: str, config: str | None
) -> None:
    calls: list[tuple[Any, ...]] = []
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})

    def fake_load_dataset(*args: Any, **kwargs: Any) -> datasets.DatasetDict:
        calls.append((args, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_task_dataset(name, revision="main") is fake
    assert calls == [((path, config), {"revision": "main"})]


@pytest.mark.parametrize(
    "error", [ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub"), FileNotFoundError("x")]
)
def test_hub_failure_becomes_actionable_error(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def failing(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DatasetUnavailableError) as info:
        load_task_dataset("super_glue/rte")
    message = str(info.value)
    assert "'super_glue/rte'" in message and "aps/super_glue" in message
    assert "--train_file/--validation_file" in message and "`vader`" in message
    assert info.value.__cause__ is error
    assert isinstance(info.value, ConnectionError)  # callers catching datasets' error keep working


def test_hub_dataset_really_offline() -> None:
    """With HF_HUB_OFFLINE=1 (set in conftest) the real datasets call fails fast with our message."""
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set; a real Hub call could retry for ~25 s")
    with pytest.raises(DatasetUnavailableError, match="--train_file/--validation_file"):
        load_task_dataset("glue/sst2")


def test_vader_names_dispatch_with_kwargs(tmp_path: Path) -> None:
    archive = make_fake_vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    via_registry = load_task_dataset("vader", archive_path=archive, seed=3)
    assert via_registry["train"].column_names == ["id", "sentence", "label", "valence"]
    from hf_fedzo.data import load_vader

    assert split_fingerprint(via_registry) == split_fingerprint(
        load_vader("movie", archive_path=archive, seed=3)
    )
    tweets = load_task_dataset("vader/tweets", archive_path=archive)
    assert all(i.startswith("tweets:") for i in tweets["train"]["id"])
    assert "domain" in load_task_dataset("vader/all", archive_path=archive)["test"].column_names


def test_custom_source_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders_module, "DATASET_SOURCES", Registry("dataset", loaders_module.DATASET_SOURCES))
    monkeypatch.setattr(loaders_module, "DATASET_ALIASES", Registry("dataset alias", loaders_module.DATASET_ALIASES))

    @register_dataset("toy/sentiment", description="toy", aliases=("toy",))
    def _toy(n: int = 2) -> datasets.DatasetDict:
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:n])})

    assert load_task_dataset("toy", n=1)["train"].num_rows == 1
