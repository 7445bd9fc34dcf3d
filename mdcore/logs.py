"""Logging set-up: the server log, and each domain's own log in its tree.

A log call that concerns one domain passes ``extra=for_domain(domain)``; the line then
goes to the server log as usual and also to ``log/mail.log`` in that domain's tree, so a
domain's admin can be given their own log and nothing of anyone else's.
"""

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from mdcore.errors import InvalidNameError
from mdcore.layout import StateRoot

DOMAIN_LOG_NAME = "mail.log"
LINE_FORMAT = "%(asctime)s %(program)s[%(process)d]: %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _LineFormatter(logging.Formatter):
    """The log line format, with the time text made once per second."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT, TIME_FORMAT)
        self.converter = time.gmtime
        self._second = -1
        self._text = ""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, made once for all the handlers that write it."""
        made = record.__dict__.get("mdmail_line")
        if made is not None and made[0] is self:
            return str(made[1])
        line = super().format(record)
        record.mdmail_line = (self, line)
        return line

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time in TIME_FORMAT; strftime runs once a second."""
        second = int(record.created)
        if second != self._second:
            # Two threads may both format a new second: the same text either way.
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text


class _Batch(threading.local):
    """Per thread: the flushes held back while a batch of lines is logged."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: dict[int, Callable[[], None]] = {}


_BATCH = _Batch()


@contextlib.contextmanager
def batched_lines() -> Iterator[None]:
    """Write the lines this thread logs in the block with one flush per log.

    A delivery logs a line per recipient to the server log and the domain's
    log; flushed one by one, that is two write(2) calls per recipient, each
    letting another thread take the GIL and back. Lines still reach the
    files before the block ends, so before the replies they record are sent.
    """
    _BATCH.depth += 1
    try:
        yield
    finally:
        _BATCH.depth -= 1
        if _BATCH.depth == 0:
            pending, _BATCH.pending = _BATCH.pending, {}
            for flush in pending.values():
                flush()


def _flush_now_or_later(key: int, flush: Callable[[], None]) -> None:
    """Flush at once, or at the end of this thread's batch of lines."""
    if _BATCH.depth:
        _BATCH.pending[key] = flush
    else:
        flush()


class _FileHandler(logging.FileHandler):
    """The server log in a file, flushed once per batch of lines."""

    def flush(self) -> None:
        """Flush at once, or at the end of this thread's batch."""
        _flush_now_or_later(id(self), super().flush)


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The server log on stderr, flushed once per batch of lines."""

    def flush(self) -> None:
        """Flush at once, or at the end of this thread's batch."""
        _flush_now_or_later(id(self), super().flush)


def for_domain(domain: str) -> dict[str, str]:
    """The `extra` argument that tags a log record with its domain."""
    return {"domain": domain}


class _ProgramFilter(logging.Filter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def filter(self, record: logging.LogRecord) -> bool:
        record.program = self.program
        return True


class DomainLogHandler(logging.Handler):
    """Appends records tagged with a hosted domain to that domain's own log."""

    # Limitation: an open log stays open, so one renamed by logrotate keeps
    # getting lines until the process restarts; rotate with copytruncate, or
    # reopening the files on SIGHUP would lift this.
    MAX_OPEN = 64

    def __init__(self, root: StateRoot) -> None:
        super().__init__()
        self.root = root
        self._files: OrderedDict[str, IO[str]] = OrderedDict()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record to its domain's log, if it names a hosted domain."""
        domain = getattr(record, "domain", None)
        if not isinstance(domain, str) or not domain:
            return
        try:
            line = self.format(record)
            with self._guard:
                stream = self._stream(domain)
                if stream is not None:
                    stream.write(line + "\n")
            if stream is not None:
                _flush_now_or_later(id(stream), functools.partial(self._flush, stream))
        except Exception:
            self.handleError(record)

    def _flush(self, stream: IO[str]) -> None:
        with self._guard:
            if not stream.closed:
                stream.flush()

    def _stream(self, domain: str) -> IO[str] | None:
        stream = self._files.get(domain)
        if stream is not None:
            self._files.move_to_end(domain)
            return stream
        try:
            folder = self.root.tree(domain).logs
        except InvalidNameError:
            return None
        if not folder.is_dir():
            return None
        stream = open(folder / DOMAIN_LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115
        _match_owner(stream, folder)
        self._files[domain] = stream
        if len(self._files) > self.MAX_OPEN:
            _, oldest = self._files.popitem(last=False)
            oldest.close()
        return stream

    def close(self) -> None:
        """Close every open domain log."""
        with self._guard:
            for stream in self._files.values():
                stream.close()
            self._files.clear()
        super().close()


def _match_owner(stream: IO[str], folder: Path) -> None:
    # A domain with its own uid owns its log too, whoever wrote the first line.
    owner = os.stat(folder)
    info = os.fstat(stream.fileno())
    if (info.st_uid, info.st_gid) != (owner.st_uid, owner.st_gid) and os.geteuid() == 0:
        os.fchown(stream.fileno(), owner.st_uid, owner.st_gid)


def setup_logging(
    program: str,
    level: str = "INFO",
    file: str = "",
    root: StateRoot | None = None,
) -> None:
    """Send log lines to stderr (or a file), and to domain logs when root is given."""
    # The logging HOWTO's "Optimization": our lines name no source line and no
    # thread, so records need not look them up (a frame walk per record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    formatter = _LineFormatter()
    main: logging.Handler = (
        _FileHandler(file, encoding="utf-8") if file else _StreamHandler(sys.stderr)
    )
    main.setLevel(level)
    handlers: list[logging.Handler] = [main]
    if root is not None:
        # A domain's own log always gets its INFO events, whatever the server log's
        # level: they are that domain's record of deliveries, logins and changes.
        domain_handler = DomainLogHandler(root)
        domain_handler.setLevel(min(logging.INFO, main.level))
        handlers.append(domain_handler)

    logger = logging.getLogger()
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_ProgramFilter(program))
        logger.addHandler(handler)
    logger.setLevel(min(handler.level for handler in handlers))
