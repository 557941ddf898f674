"""The offline VADER source: parsing, cleaning, the seeded split and its fingerprint."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hf_fedzo.data import (
    REFERENCE_FINGERPRINTS,
    AssetNotFoundError,
    load_vader,
    split_fingerprint,
)
from hf_fedzo.data.assets import AssetNotFoundError as _AssetNotFoundError
from hf_fedzo.data.assets import default_cache_dir
from hf_fedzo.data.vader import VADER_DOMAINS, read_vader_domains
from tests.asset_fixtures import DEFAULT_FAKE_ROWS, make_fake_vader_sdist, requires_real_asset

# split_fingerprint(load_vader("movie", archive_path=<default fake sdist>)). Pinned so that any change
# to the cleaning or split algorithm (which would silently re-split users' data) fails a test.
FAKE_MOVIE_FINGERPRINT = "d6eb98a40b1afd1bc1c4de35bcf10d62b5eacfdb91991cd1df616810d0bd94b9"


@pytest.fixture(scope="module")
def fake_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_vader_sdist(tmp_path_factory.mktemp("vader") / "vaderSentiment-3.3.2.tar.gz")


def test_reader_parses_crlf_tab_format(fake_sdist: Path) -> None:
    raw = read_vader_domains(fake_sdist, ["movie", "nyt"])
    assert list(raw) == ["movie", "nyt"]
    movie = raw["movie"]
    assert len(movie) == DEFAULT_FAKE_ROWS + 2
    assert movie[0].id == "movie:1" and movie[0].domain == "movie"
    assert not any("\r" in r.sentence for r in movie)  # CRLF stripped
    assert raw["nyt"][0].id == "nyt:1_1"


def test_columns_labels_and_cleaning(fake_sdist: Path) -> None:
    dsd = load_vader("movie", archive_path=fake_sdist)
    assert set(dsd) == {"train", "validation", "test"}
    train = dsd["train"]
    assert train.column_names == ["id", "sentence", "label", "valence"]  # no domain column for one domain
    assert train.features["label"].names == ["negative", "positive"]
    rows = [row for split in dsd.values() for row in split]
    assert all(row["label"] == int(row["valence"] > 0) for row in rows)
    # The mean == 0 row and the (case/whitespace-insensitive) duplicate of row 1 are dropped.
    assert len(rows) == DEFAULT_FAKE_ROWS
    assert all(row["valence"] != 0 for row in rows)
    assert len({row["sentence"].lower() for row in rows}) == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)


def test_split_is_80_10_10_and_stratified(fake_sdist: Path) -> None:
    dsd = load_vader("movie", archive_path=fake_sdist)
    sizes = {name: ds.num_rows for name, ds in dsd.items()}
    assert sizes == {"train": 48, "validation": 6, "test": 6}
    for ds in dsd.values():
        assert sum(ds["label"]) * 2 == ds.num_rows  # the fake data is balanced, so every split is


def test_fingerprint_is_stable_and_pinned(fake_sdist: Path, tmp_path: Path) -> None:
    first = split_fingerprint(load_vader("movie", archive_path=fake_sdist))
    # A second, independently written archive with the same content gives the same split.
    other = make_fake_vader_sdist(tmp_path / "copy.tar.gz")
    assert split_fingerprint(load_vader("movie", archive_path=other)) == first
    assert first == FAKE_MOVIE_FINGERPRINT


def test_fingerprint_tracks_seed_membership_and_order(fake_sdist: Path) -> None:
    dsd = load_vader("movie", archive_path=fake_sdist)
    base = split_fingerprint(dsd)
    assert split_fingerprint(load_vader("movie", archive_path=fake_sdist, seed=7)) != base
    reordered = dsd.copy()
    reordered["train"] = dsd["train"].select(list(reversed(range(dsd["train"].num_rows))))
    assert split_fingerprint(reordered) != base
    with pytest.raises(ValueError, match="'id' and 'label'"):
        split_fingerprint({"train": dsd["train"].remove_columns("id")})


def test_assignment_ignores_file_order(tmp_path: Path) -> None:
    """Splits come from a hash of (seed, id): shuffling the file keeps every sentence's split."""
    rows = [(str(i), (1.0 if i % 3 else -2.0), f"sentence number {i}") for i in range(1, 101)]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    a = load_vader("movie", archive_path=make_fake_vader_sdist(tmp_path / "a.tar.gz", {"movie": rows}))
    b = load_vader("movie", archive_path=make_fake_vader_sdist(tmp_path / "b.tar.gz", {"movie": shuffled}))
    for split in ("train", "validation", "test"):
        assert sorted(a[split]["id"]) == sorted(b[split]["id"])
    assert {k: v.num_rows for k, v in a.items()} == {"train": 80, "validation": 10, "test": 10}


def test_min_abs_valence_filters_within_the_default_split(fake_sdist: Path) -> None:
    full = load_vader("movie", archive_path=fake_sdist)
    strict = load_vader("movie", archive_path=fake_sdist, min_abs_valence=1.5)
    assert 0 < sum(ds.num_rows for ds in strict.values()) < sum(ds.num_rows for ds in full.values())
    for split in full:
        assert set(strict[split]["id"]) <= set(full[split]["id"])
        assert all(abs(v) >= 1.5 for v in strict[split]["valence"])


def test_all_domains_add_domain_column_without_moving_movie_rows(fake_sdist: Path) -> None:
    movie = load_vader("movie", archive_path=fake_sdist)
    everything = load_vader("all", archive_path=fake_sdist)
    assert everything["train"].column_names == ["id", "sentence", "label", "valence", "domain"]
    assert set(everything["train"]["domain"]) == set(VADER_DOMAINS)
    for split in movie:
        in_all = everything[split].filter(lambda row: row["domain"] == "movie")
        assert in_all["id"] == movie[split]["id"]
    pair = load_vader(["tweets", "nyt"], archive_path=fake_sdist)
    assert set(pair["test"]["domain"]) == {"tweets", "nyt"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domain": "imdb"}, "domain="),
        ({"domain": []}, "domain="),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions="),
        ({"min_abs_valence": -1.0}, "min_abs_valence="),
    ],
)
def test_bad_arguments_name_the_argument(fake_sdist: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_vader(archive_path=fake_sdist, **kwargs)


def test_malformed_line_reports_file_and_line(tmp_path: Path) -> None:
    archive = make_fake_vader_sdist(tmp_path / "bad.tar.gz", {"movie": [("1", 1.0, "ok"), ("2", "x", "bad")]})
    with pytest.raises(ValueError, match=r"movieReviewSnippets_GroundTruth.txt:2"):
        load_vader("movie", archive_path=archive)


def test_missing_archive_says_which_command_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFoundError) as info:
        load_vader("movie", cache_dir=tmp_path / "empty-cache")
    assert isinstance(info.value, FileNotFoundError) and AssetNotFoundError is _AssetNotFoundError
    message = str(info.value)
    assert "hf-fedzo prepare-assets" in message and f"--cache-dir {tmp_path / 'empty-cache'}" in message
    assert "not found" in message


# ------------------------------------------------------------------------------------------------
# real asset (only where `hf-fedzo prepare-assets` has run)
# ------------------------------------------------------------------------------------------------


def _vader_archive() -> object:
    from hf_fedzo.data import vader_archive_path

    return vader_archive_path()


real = requires_real_asset(_vader_archive, f"VADER in {default_cache_dir()}")


@real
def test_real_movie_split_counts_and_fingerprint() -> None:
    dsd = load_vader("movie")
    assert {k: v.num_rows for k, v in dsd.items()} == {"train": 8453, "validation": 1056, "test": 1057}
    assert {k: sum(v["label"]) for k, v in dsd.items()} == {"train": 4193, "validation": 524, "test": 524}
    assert dsd["train"][0]["sentence"].startswith("The story wraps back around on itself")
    assert split_fingerprint(dsd) == REFERENCE_FINGERPRINTS["movie"]


@real
def test_real_all_domains_fingerprint() -> None:
    assert split_fingerprint(load_vader("all")) == REFERENCE_FINGERPRINTS["all"]


def test_splits_are_hash_shuffled_so_prefixes_hold_both_labels(tmp_path: Path) -> None:
    """The source files are sorted by sentiment; a `select(range(n))` prefix must not be one-label."""
    rows = [(str(i), (2.0 if i <= 50 else -2.0), f"sentence number {i}") for i in range(1, 101)]
    dsd = load_vader("movie", archive_path=make_fake_vader_sdist(tmp_path / "sorted.tar.gz", {"movie": rows}))
    assert set(dsd["train"]["label"][:20]) == {0, 1}


def test_split_prefixes_keep_the_split_label_mix(tmp_path: Path) -> None:
    """Every prefix a recipe takes (`select(range(n))`) has about its split's label mix, in every split: the
    order must not follow the hash bands that assigned the rows (validation prefixes were one-label-heavy)."""
    rows = [(str(i), (2.0 if i % 2 else -2.0), f"sentence number {i}") for i in range(1, 4001)]
    dsd = load_vader("movie", archive_path=make_fake_vader_sdist(tmp_path / "mixed.tar.gz", {"movie": rows}))
    for split in ("train", "validation", "test"):
        labels = dsd[split]["label"]
        prefix = labels[: len(labels) // 4]
        assert abs(sum(prefix) / len(prefix) - sum(labels) / len(labels)) < 0.12, split


@real
def test_real_validation_prefix_is_not_label_skewed() -> None:
    validation = load_vader("movie")["validation"]["label"]
    prefix = validation[:128]
    assert abs(sum(prefix) / 128 - sum(validation) / len(validation)) < 0.1
