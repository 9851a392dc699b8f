"""The ``ravel-bench`` command line.

The CLI turns flags into library calls, renders the results and owns logging and exit codes:
0 ok, 1 error (one line plus a hint; traceback with ``RAVEL_BENCH_DEBUG=1``), 2 usage.
"""

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from ravel_bench import __version__
from ravel_bench.data import OFFICIAL_RELEASE_URL
from ravel_bench.dataset_repo import build_dataset_folder
from ravel_bench.errors import RavelBenchError

logger = logging.getLogger("ravel_bench")


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = build_dataset_folder(args.source, args.out, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    _out(f"RAVEL dataset repo written to {summary.out_dir}")
    _out(summary.format_table())
    _out(f"{len(summary.defects)} known release defects documented in README.md:")
    for d in summary.defects:
        _out(f"  - {d.entity_type}/{d.kind}: {d.description[:100]}")
    _out(f"size {summary.size_bytes / 1e6:.2f} MB, built in {elapsed:.1f} s")
    return 0


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``ravel-bench``."""
    parser = argparse.ArgumentParser(
        prog="ravel-bench", description="The RAVEL interpretability benchmark."
    )
    parser.add_argument("--version", action="version", version=f"ravel-bench {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log details (DEBUG)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dataset = commands.add_parser("dataset", help="the RAVEL release as a Hub dataset repo")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", metavar="ACTION", required=True
    )
    build = dataset_commands.add_parser(
        "build", help="convert the release into a dataset repo folder (parquet + card)"
    )
    build.add_argument(
        "--source",
        default=OFFICIAL_RELEASE_URL,
        help="release folder, data.tgz, or http(s) URL (default: the official release URL)",
    )
    build.add_argument("--out", required=True, help="dataset repo folder to write")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    build.set_defaults(func=_cmd_dataset_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ravel-bench`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help/--version
        return int(exc.code or 0)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ravel_bench").setLevel(level)
    try:
        return args.func(args)
    except RavelBenchError as exc:
        if os.environ.get("RAVEL_BENCH_DEBUG") == "1":
            raise
        sys.stderr.write(f"error: {exc}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
