"""The offline labeled-text source: human-rated VADER sentences, read from the ``vaderSentiment`` sdist.

The sdist's ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds four ground-truth files with one
``id<TAB>mean_valence<TAB>sentence`` line each (UTF-8, CRLF); every sentence was rated by about 20
people on [-4, 4]. The movie file is 10,605 Rotten Tomatoes snippets from Pang & Lee, the sentences
SST-2 is built from, so ``label = int(mean_valence > 0)`` gives an SST-2 stand-in. The Amazon, tweet
and NYT-editorial files give extra domains for non-IID federated clients.

Cleaning, in this order (documented here because the split depends on it):

1. rows with ``mean_valence == 0`` are dropped: their binary label would be arbitrary;
2. repeated sentences (same text after lower-casing and collapsing whitespace) keep only their first
   occurrence, so no sentence can appear in both train and test. With vaderSentiment 3.3.2 this drops
   2 movie, 10 Amazon, 62 NYT and 60 tweet rows; the tweet ones are VADER's deliberate CAPS variants
   ("thanks" vs "THANKS"), near-copies that would leak across splits of a binary task;
3. every remaining row is assigned to train/validation/test (default 80/10/10), stratified by label,
   by ranking ``sha256(f"{seed}:{domain}:{id}")`` inside each (domain, label) group. The assignment
   depends only on the archive, the seed and the fractions: no RNG, library version or row order is
   involved, and each domain is split on its own, so adding domains never moves a movie sentence;
4. ``min_abs_valence`` filters rows *after* the assignment, so a stricter filter yields subsets of
   the default splits (never a re-shuffled test set).

Rows keep the archive's order inside each split. :func:`split_fingerprint` hashes the ordered
``(id, label)`` pairs so tests and the demo can assert that the split never changes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SPLIT_FRACTIONS",
    "LABEL_NAMES",
    "MOVIE_SPLIT_FINGERPRINT",
    "REFERENCE_FINGERPRINTS",
    "VADER_DOMAINS",
    "VaderRecord",
    "load_vader",
    "read_vader_domains",
    "split_fingerprint",
]

#: domain name → ground-truth file inside ``hutto_ICWSM_2014.tar.gz``
VADER_DOMAINS: dict[str, str] = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
LABEL_NAMES = ("negative", "positive")
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_SEED = 42
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

#: ``split_fingerprint(load_vader(domain))`` with the default seed, fractions and no valence filter,
#: measured on vaderSentiment 3.3.2; the real-asset tests and the demo assert against these.
REFERENCE_FINGERPRINTS: dict[str, str] = {
    "movie": "5e9b6c356bc5c1ab2e1ae668c24b91b915ff8efef4c8105992fbbf4becff1453",
    "amazon": "c0306ff3af513194187c0d24af8f35ffad93d7b3e61ddd04a9d7b908441ce80e",
    "tweets": "795ccbf6325856f3849791493a8cbe6d60b84a53e20c0596f60b24d6c68ecbc9",
    "nyt": "e6da0e1e4050bae72c7c9ba5fb24d1def2376c10df1d0d7610142658d30c39e1",
    "all": "c72b0d100601b0745135f47c6a10fab0120a4ddd86061b05eef30278876f8dae",
}
MOVIE_SPLIT_FINGERPRINT = REFERENCE_FINGERPRINTS["movie"]


@dataclass(frozen=True)
class VaderRecord:
    """One rated sentence; ``id`` is made globally unique as ``"<domain>:<id in the file>"``."""

    id: str
    domain: str
    sentence: str
    valence: float


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _inner_archive_bytes(archive_path: str, mtime_ns: int, size: int) -> bytes:
    """The nested ``hutto_ICWSM_2014.tar.gz`` (2.3 MB), read in memory; nothing touches the disk.

    Cached per (path, mtime, size) because federated simulations load the same source many times.
    """
    with tarfile.open(archive_path, "r:*") as outer:
        member = next(
            (m for m in outer.getmembers() if m.isfile() and m.name.endswith("/" + INNER_ARCHIVE)), None
        )
        if member is None:
            raise ValueError(f"{archive_path} has no */{INNER_ARCHIVE}; is it the vaderSentiment sdist?")
        fh = outer.extractfile(member)
        assert fh is not None  # isfile() above
        return fh.read()


def _parse_ground_truth(text: str, domain: str, source: str) -> list[VaderRecord]:
    records: list[VaderRecord] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{source}:{lineno}: expected 'id<TAB>mean<TAB>sentence', got {line[:80]!r}")
        raw_id, mean, sentence = parts
        try:
            valence = float(mean)
        except ValueError:
            raise ValueError(f"{source}:{lineno}: mean valence {mean!r} is not a number") from None
        records.append(VaderRecord(f"{domain}:{raw_id.strip()}", domain, sentence.strip(), valence))
    return records


def read_vader_domains(
    archive_path: str | os.PathLike[str], domains: Sequence[str] = tuple(VADER_DOMAINS)
) -> dict[str, list[VaderRecord]]:
    """All raw rows of each requested domain, in file order (no cleaning)."""
    unknown = [d for d in domains if d not in VADER_DOMAINS]
    if unknown:
        raise ValueError(f"Unknown domains={unknown}; expected a subset of {list(VADER_DOMAINS)}.")
    path = Path(archive_path)
    stat = path.stat()
    payload = _inner_archive_bytes(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    wanted = {VADER_DOMAINS[d]: d for d in domains}
    texts: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as inner:
        for member in inner.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in wanted:
                fh = inner.extractfile(member)
                assert fh is not None
                texts[wanted[name]] = fh.read().decode("utf-8")
    missing = [VADER_DOMAINS[d] for d in domains if d not in texts]
    if missing:
        raise ValueError(f"{archive_path}: the inner archive lacks {missing}.")
    return {d: _parse_ground_truth(texts[d], d, VADER_DOMAINS[d]) for d in domains}


# --------------------------------------------------------------------------------------------------
# cleaning and splitting
# --------------------------------------------------------------------------------------------------


def _dedup_key(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _clean(records: Iterable[VaderRecord]) -> list[VaderRecord]:
    seen: set[str] = set()
    kept: list[VaderRecord] = []
    for record in records:
        key = _dedup_key(record.sentence)
        if record.valence == 0 or key in seen:
            continue
        seen.add(key)
        kept.append(record)
    return kept


def _rank_key(seed: int, record: VaderRecord, purpose: str = "") -> str:
    return hashlib.sha256(f"{purpose}{seed}:{record.id}".encode()).hexdigest()


def _assign_splits(
    records: Sequence[VaderRecord], seed: int, fractions: Sequence[float]
) -> dict[str, list[VaderRecord]]:
    """Stratified, hash-ranked assignment; each split is then ordered by a second, independent hash.

    The source files are sorted by sentiment, so keeping file order would make ``select(range(n))`` (or
    ``--max_eval_samples``) a one-label subset; the hash order is a shuffle that is stable everywhere. The order
    must not reuse the assignment's hash: a split holds one band of each label's ranks, and ordering by the same
    rank puts the label whose band starts lower first (the first 128 validation rows were 69% positive).
    """
    assignment: dict[str, str] = {}
    for label in (0, 1):
        group = sorted((r for r in records if int(r.valence > 0) == label), key=lambda r: _rank_key(seed, r))
        n_train = round(len(group) * fractions[0])
        n_validation = round(len(group) * fractions[1])
        for rank, record in enumerate(group):
            split = "train" if rank < n_train else "validation" if rank < n_train + n_validation else "test"
            assignment[record.id] = split
    splits: dict[str, list[VaderRecord]] = {name: [] for name in SPLIT_NAMES}
    for record in sorted(records, key=lambda r: _rank_key(seed, r, "order:")):
        splits[assignment[record.id]].append(record)
    return splits


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split_fractions={tuple(split_fractions)!r} must be three non-negative numbers "
            "(train, validation, test) summing to 1."
        )
    return fractions  # type: ignore[return-value]


def _resolve_domains(domain: str | Sequence[str]) -> list[str]:
    requested = [domain] if isinstance(domain, str) else list(domain)
    if requested == ["all"]:
        return list(VADER_DOMAINS)
    unknown = [d for d in requested if d not in VADER_DOMAINS]
    if unknown or not requested:
        raise ValueError(
            f"domain={domain!r} must be one of {[*VADER_DOMAINS, 'all']} or a non-empty list of domains."
        )
    return list(dict.fromkeys(requested))


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def load_vader(
    domain: str | Sequence[str] = "movie",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    min_abs_valence: float = 0.0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    archive_path: str | os.PathLike[str] | None = None,
) -> DatasetDict:
    """The VADER sentences as a ``DatasetDict`` with ``train``/``validation``/``test`` splits.

    Columns: ``id`` (``"movie:17"``), ``sentence``, ``label`` (``ClassLabel`` negative/positive,
    ``int(valence > 0)``), ``valence`` (the mean human rating), plus ``domain`` when several domains
    are loaded (``"all"`` or a list), so federated code can give each domain its own clients.

    Args:
        domain: ``"movie"``, ``"amazon"``, ``"tweets"``, ``"nyt"``, ``"all"`` or a list of domains.
        cache_dir: hf_fedzo asset cache holding the sdist (see :func:`~hf_fedzo.data.assets.prepare_assets`).
        seed: seeds the split assignment (not an RNG: a hash ranking, stable everywhere).
        min_abs_valence: keep only rows with ``|valence| >= min_abs_valence`` (e.g. 1.0 for cleaner
            labels); applied after the split assignment.
        split_fractions: train/validation/test fractions.
        archive_path: read this ``vaderSentiment-3.3.2.tar.gz`` instead of the cached one (tests).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from hf_fedzo.data.assets import vader_archive_path

    domains = _resolve_domains(domain)
    fractions = _check_fractions(split_fractions)
    if min_abs_valence < 0:
        raise ValueError(f"min_abs_valence={min_abs_valence!r} must be >= 0.")
    path = Path(archive_path) if archive_path is not None else vader_archive_path(cache_dir)
    if archive_path is not None and not path.is_file():
        raise FileNotFoundError(f"archive_path={str(path)!r} does not exist.")

    per_split: dict[str, list[VaderRecord]] = {name: [] for name in SPLIT_NAMES}
    for records in read_vader_domains(path, domains).values():
        splits = _assign_splits(_clean(records), seed, fractions)
        for split, rows in splits.items():
            per_split[split].extend(r for r in rows if abs(r.valence) >= min_abs_valence)

    with_domain = len(domains) > 1
    columns = {
        "id": Value("string"),
        "sentence": Value("string"),
        "label": ClassLabel(names=list(LABEL_NAMES)),
        "valence": Value("float64"),
    }
    if with_domain:
        columns["domain"] = Value("string")
    features = Features(columns)

    def to_dataset(split: str, rows: list[VaderRecord]) -> Dataset:
        data: dict[str, list[object]] = {
            "id": [r.id for r in rows],
            "sentence": [r.sentence for r in rows],
            "label": [int(r.valence > 0) for r in rows],
            "valence": [r.valence for r in rows],
        }
        if with_domain:
            data["domain"] = [r.domain for r in rows]
        return Dataset.from_dict(data, features=features, split=split)

    return DatasetDict({split: to_dataset(split, rows) for split, rows in per_split.items()})


def split_fingerprint(dataset_dict: DatasetDict) -> str:
    """sha256 over every split's ordered ``(id, label)`` pairs; splits are visited in sorted order.

    Two loads give the same fingerprint exactly when they give the same examples, labels, split
    membership and order, which is what reproducible federated partitions need.
    """
    digest = hashlib.sha256()
    for split in sorted(dataset_dict):
        dataset = dataset_dict[split]
        missing = {"id", "label"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"dataset_dict[{split!r}] lacks column(s) {sorted(missing)}; split_fingerprint needs "
                "'id' and 'label'."
            )
        digest.update(f"[{split}] {dataset.num_rows}\n".encode())
        for example_id, label in zip(dataset["id"], dataset["label"], strict=True):
            digest.update(f"{example_id}\t{label}\n".encode())
    return digest.hexdigest()
