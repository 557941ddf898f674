"""A recipe's script entry point: known "cannot get the model/data", unreadable data and untrustworthy
resume-state errors end in one line and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hf_fedzo.data import AssetNotFoundError, DataError, DatasetUnavailableError
from hf_fedzo.federation.integrity import StateFileError
from hf_fedzo.runs.models import ModelArgumentError, ModelUnavailableError


def run_recipe(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Script entry: run `main`, turning "cannot get the model/data" errors into a one-line message and exit 2.

    Those errors already say which flag to pass instead; a traceback would only bury that line.
    """
    try:
        main(argv)
    except (ModelUnavailableError, ModelArgumentError, DatasetUnavailableError, AssetNotFoundError, DataError,
            StateFileError, FileNotFoundError) as err:  # a --*_file that does not exist is a flag error too
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
