"""Dedupe tags: a retry of a message already stored for a recipient is no copy.

A delivery made with a dedupe key (the MTA's queue id) carries a tag derived
from that key and the recipient in its Maildir file name ("D<tag>", see
mdcore.maildir.unique_name). Before storing, a delivery looks for the tag among
the Maildir's recent names; a retry after a connection lost past the final dot
then finds its first copy instead of making a second. Where forked workers
deliver side by side, each tagged delivery is also noted in a table in memory
they share (mdcore.sharedtags), so that a worker whose own view of the Maildir
is older reads it again before storing a copy.
"""

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mdcore.sharedtags import DEFAULT_SLOTS, SharedTags

DEDUPE_WINDOW_SECONDS = 7 * 24 * 3600

_PRUNE_EVERY_SECONDS = 3600.0
# The seconds and the tag of a name made by mdcore.maildir.unique_name.
_TAGGED_NAME = re.compile(r"(\d+)\.M\d+P\d+Q\d+D([0-9a-f]{12})\.")


def dedupe_tag(dedupe_key: str, recipient: str) -> str:
    """Return the 12 hex digits that mark one message for one recipient."""
    material = f"{dedupe_key}\0{recipient}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(material).hexdigest()[:12]


class MaildirTags:
    """The dedupe tags of one Maildir's recent messages; callers hold lock."""

    def __init__(
        self,
        maildir: Path,
        window: float,
        clock: Callable[[], float],
        shared: SharedTags | None = None,
    ):
        self.lock = threading.Lock()
        self._maildir = maildir
        self._key = os.fspath(maildir)
        self._window = window
        self._clock = clock
        self._shared = shared
        self._tags: dict[str, tuple[str, int]] | None = None
        self._next_prune = 0.0

    def find(self, tag: str) -> str | None:
        """Return the name of the recent message that carries tag, if any."""
        cutoff = self._clock() - self._window
        entry = self._loaded().get(tag)
        if (
            entry is None
            and self._shared is not None
            and self._shared.seen(self._key, tag, cutoff)
        ):
            # Another worker delivered it since this one read the Maildir:
            # read it again. A message read and deleted since is not a copy.
            self._tags = self._scan()
            entry = self._tags.get(tag)
        if entry is None or entry[1] < cutoff:
            return None
        return entry[0]

    def add(self, tag: str, name: str) -> None:
        """Remember that the message called name carries tag, here and for siblings."""
        tags = self._loaded()
        tags[tag] = (name, int(name.split(".", 1)[0]))
        if self._shared is not None:
            self._shared.add(self._key, tag)
        now = self._clock()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_SECONDS
            self._tags = {
                key: entry
                for key, entry in tags.items()
                if entry[1] >= now - self._window
            }

    def discard(self, tag: str) -> None:
        """Forget a tag whose message was removed again."""
        # A sibling that still finds it in the shared table reads the
        # Maildir, does not find the message, and delivers.
        self._loaded().pop(tag, None)

    @property
    def loaded(self) -> bool:
        """True once the Maildir's names have been read."""
        return self._tags is not None

    def _loaded(self) -> dict[str, tuple[str, int]]:
        """Return the tags, reading new/ and cur/ once on first use."""
        if self._tags is None:
            self._tags = self._scan()
        return self._tags

    def _scan(self) -> dict[str, tuple[str, int]]:
        """Collect the tags of names stamped within the window, one listdir each."""
        cutoff = self._clock() - self._window
        tags: dict[str, tuple[str, int]] = {}
        for subdir in ("new", "cur"):
            try:
                names = os.listdir(self._maildir / subdir)
            except FileNotFoundError:
                continue
            for name in names:
                match = _TAGGED_NAME.match(name)
                if match is not None and int(match[1]) >= cutoff:
                    tags[match[2]] = (name, int(match[1]))
        return tags


class DedupeIndex:
    """Per process, the dedupe tags of each Maildir this process delivers to.

    With `shared`, for a server whose forked workers deliver side by side,
    each keyed delivery is also recorded in a table all workers see, and a
    miss there makes a worker read the Maildir again (mdcore.sharedtags).
    """

    def __init__(
        self,
        window_seconds: float = DEDUPE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        shared: SharedTags | None = None,
    ) -> None:
        self._window = window_seconds
        self._clock = clock
        self.shared = shared
        self._lock = threading.Lock()
        self._maildirs: dict[str, MaildirTags] = {}

    def for_maildir(self, maildir: Path) -> MaildirTags:
        """Return the tags of one Maildir (read from disk at first use)."""
        key = os.path.abspath(maildir)
        with self._lock:
            tags = self._maildirs.get(key)
            if tags is None:
                tags = MaildirTags(Path(key), self._window, self._clock, self.shared)
                self._maildirs[key] = tags
            return tags


# The index of this process; a parent about to fork delivery workers gives it
# a shared table (share_dedupe_tags), which each worker then inherits.
PROCESS_INDEX = DedupeIndex()


def share_dedupe_tags(slots: int = DEFAULT_SLOTS) -> None:
    """Before forking workers that deliver side by side: share their dedupe tags."""
    if PROCESS_INDEX.shared is None:
        PROCESS_INDEX.shared = SharedTags(slots)
