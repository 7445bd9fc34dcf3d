"""Is the filesystem quiet enough for a benchmark? Time the creation of empty files.

On ext4 without a journal, every file created soon after many deletions costs a
walk over the recently freed inodes (see SpentFolders in lmtp_load.py): a few
hundred creations show it. Run: .venv/bin/python bench/probe_create.py [--workdir DIR]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

FILES = 200
# Measured on this machine: 16-26 us a file on a quiet filesystem; 300 and more
# within a minute or two after thousands of deletions, still 40-70 three minutes
# after a benchmark removed its scratch folder.
QUIET_MICROSECONDS = 30.0


def microseconds_per_create(folder: Path, files: int = FILES) -> float:
    """Create files empty files in folder; the mean time of one, in microseconds."""
    started = time.perf_counter()
    for number in range(files):
        fd = os.open(folder / str(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    return (time.perf_counter() - started) / files * 1e6


def main() -> int:
    """Print the figure; exit 1 if the filesystem is not quiet."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where benchmarks make scratch")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=args.workdir))
    try:
        figure = microseconds_per_create(folder)
    finally:
        shutil.rmtree(folder)
    quiet = figure < QUIET_MICROSECONDS
    verdict = "quiet" if quiet else "busy with recent deletions: wait and try again"
    print(f"{figure:.0f} us to create a file ({FILES} files): {verdict}")
    return 0 if quiet else 1


if __name__ == "__main__":
    sys.exit(main())
