"""What the benchmark commands share: where things are, the common flags and the log format."""

import argparse
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RELEASE = ROOT.parent / "shared" / "ravel" / "data.tgz"
DEFAULT_OUT = ROOT / "benchmarks" / "results"


def base_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser with ``--quick``, ``--out`` and ``--release``; described by ``doc``'s first line."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--release", default=str(DEFAULT_RELEASE), help="the RAVEL data.tgz")
    return parser


def configure_logging() -> None:
    """Timestamped progress lines from ``benchmarks``; only warnings from the library."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ravel_bench").setLevel(logging.WARNING)
