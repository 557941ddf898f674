"""A recipe's script entry point: known "cannot get the model/data", unreadable data and untrustworthy
resume-state errors end in one line and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from hf_fedzo.data import AssetNotFoundError, DataError, DatasetUnavailableError
from hf_fedzo.federation.integrity import StateFileError
from hf_fedzo.runs.models import ModelArgumentError, ModelUnavailableError


def run_recipe(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Script entry: run `main`, turning "cannot get the model/data" errors into a one-line message and exit 2.

    Those errors already say which flag to pass instead; a traceback would only bury that line.
    """
    try:
        main(argv)
        end_process_group()
    except (ModelUnavailableError, ModelArgumentError, DatasetUnavailableError, AssetNotFoundError, DataError,
            StateFileError, FileNotFoundError) as err:  # a --*_file that does not exist is a flag error too
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def end_process_group() -> None:
    """Tear down the `accelerate launch` process group, if there is one, once every rank has arrived.

    Left to interpreter exit, gloo's worker threads can outlive the group and abort one rank with
    "terminate called without an active exception" after training succeeded (seen once in CI on a
    two-process DDP test), which fails the whole launch.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
