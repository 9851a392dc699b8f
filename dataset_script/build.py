"""Build the RAVEL Hub dataset repo folder from the official release.

Usage::

    python dataset_script/build.py --source ../shared/ravel/data.tgz --out build/ravel

Same as ``ravel-bench dataset build``; the logic lives in :mod:`ravel_bench.dataset_repo`.
"""

import sys

from ravel_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["dataset", "build", *sys.argv[1:]]))
