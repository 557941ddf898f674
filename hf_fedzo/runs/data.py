"""The train/validation splits a recipe trains and evaluates on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_fedzo.data import DataError, load_task_dataset
from hf_fedzo.runs.arguments import DataArguments

if TYPE_CHECKING:
    from datasets import DatasetDict


def load_splits(data_args: DataArguments) -> DatasetDict:
    """`train` and `validation` from local files or a named source, cut to --max_train/eval_samples.

    The first N rows are kept rather than a random sample so runs with the same flags see the same data
    whatever the seed; shuffle your files if they are sorted.

    Raises:
        DataError: an unreadable file, a missing split or a bad --max_*_samples (recipes print it in one line).
        DatasetUnavailableError: a Hub dataset cannot be reached; the message names the flags to use instead.
    """
    from datasets import DatasetDict

    raw = load_task_dataset(data_args.source, train_file=data_args.train_file,
                            validation_file=data_args.validation_file)
    missing = [split for split in ("train", "validation") if split not in raw]
    if missing:
        flags = " and ".join(f"--{split}_file" for split in missing)
        raise DataError(f"the data has no {'/'.join(missing)} split (splits: {sorted(raw)}); pass {flags}")
    splits = {}
    for split, limit, flag in (("train", data_args.max_train_samples, "--max_train_samples"),
                               ("validation", data_args.max_eval_samples, "--max_eval_samples")):
        if limit is not None and limit < 1:
            raise DataError(f"{flag} must be >= 1, got {limit}")
        data = raw[split]
        splits[split] = data.select(range(min(limit, len(data)))) if limit is not None else data
    return DatasetDict(splits)
