"""The last lines of a log file, read from its end so a big log costs little."""

import os
from pathlib import Path

BLOCK = 64 * 1024


def tail_lines(path: Path, count: int) -> list[str]:
    """Up to count last lines of the file (none if it does not exist)."""
    try:
        stream = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return []
    with stream:
        end = stream.seek(0, os.SEEK_END)
        data = b""
        position = end

        # Read backwards until the block holds count full lines or the file ends.
        while position > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, position)
            position -= step
            stream.seek(position)
            data = stream.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    if position > 0:
        lines = lines[1:]  # the first line was cut by the block boundary
    return lines[-count:] if count > 0 else []
