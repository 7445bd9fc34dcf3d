"""Writing generated MTA files in place, and running the MTA's own tools on them.

Each file is replaced atomically and only when its text changed, so Postfix never
reads half a table and an unchanged table keeps its time stamp. Postfix's tools
print their errors only to a terminal, so they run on a pseudo-terminal here and a
failure comes back as one line with Postfix's own words.
"""

import logging
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mdcore.atomic import atomic_write
from mdcore.errors import MdmailError
from mdcore.postfix_maps import DEFAULT_QUEUE_DIRECTORY, MapType

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0


class MtaCommandError(MdmailError):
    """An MTA tool (postmap, postfix, makemap) failed; the message says why."""


@dataclass(frozen=True)
class Written:
    """One generated file and whether this run changed it."""

    path: Path
    changed: bool


def write_files(directory: Path, files: dict[str, str]) -> list[Written]:
    """Write each changed file atomically (mode 0644: the MTA reads them)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        changed = _read(path) != text
        if changed:
            atomic_write(path, text, mode=0o644)
            log.info("event=mta-file-written file=%s", path)
        written.append(Written(path, changed))
    return written


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _config_args(config_dir: Path | None) -> list[str]:
    return ["-c", str(config_dir)] if config_dir is not None else []


def postfix_queue_directory(config_dir: Path | None) -> Path:
    """Postfix's queue_directory (postconf), or the usual one if postconf fails."""
    args = ["postconf", *_config_args(config_dir), "-h", "queue_directory"]
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except OSError:
        return DEFAULT_QUEUE_DIRECTORY
    value = done.stdout.strip()
    return Path(value) if done.returncode == 0 and value else DEFAULT_QUEUE_DIRECTORY


def postmap(map_type: MapType, path: Path, config_dir: Path | None) -> str:
    """Index one table with postmap; returns the map it built, e.g. lmdb:/path."""
    table = f"{map_type.value}:{path}"
    run_postfix_tool(["postmap", *_config_args(config_dir), table], f"postmap {table}")
    return table


def postfix_reload(config_dir: Path | None) -> None:
    """Make a running Postfix re-read its configuration and texthash tables."""
    args = ["postfix", *_config_args(config_dir), "reload"]
    run_postfix_tool(args, "postfix reload")


def run_postfix_tool(args: list[str], what: str) -> str:
    """Run a Postfix tool; on failure raise one line with its messages."""
    status, output = _run_on_terminal(args)
    if status == 0:
        return output
    reason = _one_line(output)
    if not reason and args[0] == "postfix":
        # Nothing said: `postfix check` names what is wrong with the setup.
        check = [*args[:-1], "check"]
        reason = _one_line(_run_on_terminal(check)[1])
    raise MtaCommandError(
        f"{what} failed (exit {status}): {reason or 'no message; see the mail log'}"
    )


def _one_line(output: str) -> str:
    return "; ".join(line.strip() for line in output.splitlines() if line.strip())


def _run_on_terminal(args: list[str]) -> tuple[int, str]:
    """Run args with stdout and stderr on a new pseudo-terminal; (status, output)."""
    main_fd, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
        )
    except OSError as error:
        os.close(main_fd)
        raise MtaCommandError(f"cannot run {args[0]}: {error.strerror}") from None
    finally:
        os.close(terminal)
    try:
        output = _read_terminal(main_fd, time.monotonic() + COMMAND_TIMEOUT)
    finally:
        os.close(main_fd)
    try:
        status = process.wait(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise MtaCommandError(f"{args[0]} did not finish in time") from None
    return status, output.decode("utf-8", "replace").replace("\r\n", "\n")


def _read_terminal(main_fd: int, deadline: float) -> bytes:
    """Read until the tool and its children close the terminal, or the deadline."""
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([main_fd], [], [], remaining)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def makemap(program: str, sendmail_cf: Path | None, path: Path) -> str:
    """Build path.db with sendmail's makemap from the text table at path."""
    config = ["-C", str(sendmail_cf)] if sendmail_cf is not None else []
    args = [program, *config, "hash", str(path)]
    try:
        with path.open("rb") as table:
            done = subprocess.run(
                args,
                stdin=table,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
    except OSError as error:
        raise MtaCommandError(f"cannot run {program}: {error.strerror}") from None
    if done.returncode != 0:
        reason = _one_line(done.stderr + done.stdout) or "no message"
        raise MtaCommandError(
            f"makemap hash {path} failed (exit {done.returncode}): {reason}"
        )
    return f"hash:{path}"
