"""A Maildir's messages in arrival order, kept as columns and updated by difference.

A POP3 login lists the whole maildrop. Building one Python object per message
costs more than reading the directories (10,000 messages: 5 ms to read new/
and cur/, about 50 ms to parse and sort the names into records), so a listing
is kept as a few tuples, one per field, and a new listing starts from the last
one: names already known keep their parsed fields and only new names are
parsed. The last listing is also written to the Maildir (`mdmail-listing`), so
that a restarted server starts from it as Dovecot starts from its index.

The file is a cache and is trusted for nothing but what it can be checked
against: the folder times say whether it is current, and a name it lists is
used only while that file is still in new/ or cur/.
"""

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mdcore.mailbox_reader import arrival_key, base_name, file_sizes

log = logging.getLogger(__name__)

LISTING_FILE = "mdmail-listing"
_MAGIC = "mdmail-listing 1"
# "<sec>.M<usec>...,S=<size>,W=<crlf size>", our names and Dovecot's: all
# fields in one match. Any other name takes the general path.
_USUAL_NAME = re.compile(r"(\d+)\.M(\d+)[^,]*,S=(\d+),W=(\d+)")
# RFC 1939 section 7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
UIDL_TEXT = re.compile(r"[\x21-\x7e]{1,70}\Z")

Stamps = tuple[int, ...]
_Key = tuple[int, int, str]


@dataclass(frozen=True)
class Listing:
    """The messages of one Maildir, oldest first, one tuple per field.

    `locations` are "new/NAME" or "cur/NAME"; `sizes` are as stored (LF line
    ends), `vsizes` as POP3 counts them (CRLF); `stamps` are the modification
    times of new/, cur/ and the UIDL map when the folders were read.
    """

    stamps: Stamps
    locations: tuple[str, ...]
    sizes: tuple[int, ...]
    vsizes: tuple[int, ...]
    uidls: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.locations)


EMPTY = Listing((), (), (), (), ())


def uidl_for(base: str, uidl_map: dict[str, str]) -> str:
    """The UIDL of a message: the one imported for it, else its base name."""
    mapped = uidl_map.get(base)
    if mapped is not None:
        return mapped
    if UIDL_TEXT.match(base):
        return base
    # A base name too long or with odd characters: a digest of it is as stable.
    return hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def scan_maildir(
    maildir: Path, stamps: Stamps, uidl_map: dict[str, str], previous: Listing
) -> Listing:
    """List new/ and cur/ now, reusing what previous knew of names still there."""
    known = {location: index for index, location in enumerate(previous.locations)}
    kept: list[int] = []
    fresh: list[tuple[_Key, str, int, int]] = []
    new_names = _names(maildir / "new")
    # new/ before cur/: a file a reader moves from new/ to cur/ between the two
    # listings is then seen twice (and kept once, from new/) instead of not at all.
    in_new = {name.partition(":")[0] for name in new_names}
    cur_names = [
        name for name in _names(maildir / "cur") if name.partition(":")[0] not in in_new
    ]
    for subdir, names in (("new", new_names), ("cur", cur_names)):
        prefix = f"{subdir}/"
        for name in names:
            location = prefix + name
            index = known.get(location)
            if index is not None:
                kept.append(index)
                continue
            parsed = _parse(maildir / subdir, name)
            if parsed is not None:
                fresh.append((parsed[0], location, parsed[1], parsed[2]))
    kept.sort()
    fresh.sort()
    same_map = previous.stamps[2:] == stamps[2:]
    return _merge(stamps, uidl_map, previous, kept, fresh, same_map)


def _merge(
    stamps: Stamps,
    uidl_map: dict[str, str],
    previous: Listing,
    kept: list[int],
    fresh: list[tuple[_Key, str, int, int]],
    same_map: bool,
) -> Listing:
    """Old rows in their order, then the new ones; sorted anew only if needed."""
    locations = [previous.locations[i] for i in kept]
    sizes = [previous.sizes[i] for i in kept]
    vsizes = [previous.vsizes[i] for i in kept]
    if same_map:
        uidls = [previous.uidls[i] for i in kept]
    else:
        uidls = [uidl_for(_base(location), uidl_map) for location in locations]
    if fresh and locations and fresh[0][0] < arrival_key(_name(locations[-1])):
        # A new name older than the newest kept one (a message moved to cur/
        # and renamed, say): the whole listing is put in order again.
        rows = sorted(
            [
                (arrival_key(_name(loc)), loc, size, vsize, uidl)
                for loc, size, vsize, uidl in zip(
                    locations, sizes, vsizes, uidls, strict=True
                )
            ]
            + [
                (key, loc, size, vsize, uidl_for(_base(loc), uidl_map))
                for key, loc, size, vsize in fresh
            ]
        )
        return Listing(
            stamps,
            tuple(row[1] for row in rows),
            tuple(row[2] for row in rows),
            tuple(row[3] for row in rows),
            tuple(row[4] for row in rows),
        )
    for _, location, size, vsize in fresh:
        locations.append(location)
        sizes.append(size)
        vsizes.append(vsize)
        uidls.append(uidl_for(_base(location), uidl_map))
    return Listing(stamps, tuple(locations), tuple(sizes), tuple(vsizes), tuple(uidls))


def _parse(directory: Path, name: str) -> tuple[_Key, int, int] | None:
    """Arrival key, stored size and CRLF size of one file; None if it vanished."""
    base = base_name(name)
    usual = _USUAL_NAME.fullmatch(base)
    if usual is not None:
        seconds, micros, size, vsize = usual.groups()
        return (int(seconds), int(micros), name), int(size), int(vsize)
    sizes = file_sizes(str(directory), name)
    if sizes is None:
        return None
    return arrival_key(name), sizes[0], sizes[1]


def _name(location: str) -> str:
    return location[4:]


def _base(location: str) -> str:
    return location[4:].partition(":")[0]


def _names(directory: Path) -> list[str]:
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except FileNotFoundError:
        return []


def load_listing(maildir: Path) -> Listing:
    """The listing written to the Maildir last, or EMPTY if none is usable."""
    try:
        with open(maildir / LISTING_FILE, "rb") as stream:
            text = stream.read().decode("utf-8", "surrogateescape")
    except OSError:
        return EMPTY
    try:
        return _decode(text)
    except ValueError as error:
        log.info("maildir=%s listing file ignored: %s", maildir, error)
        return EMPTY


def _decode(text: str) -> Listing:
    lines = text.split("\n")
    if len(lines) < 5 or lines[0] != _MAGIC:
        raise ValueError("not a listing file")
    fields = [int(field) for field in lines[1].split()]
    if len(fields) != 4 or fields[3] < 0:
        raise ValueError("bad header")
    count = fields[3]
    if len(lines) != 2 * count + 5 or lines[-1] != "end":
        raise ValueError("truncated")
    locations = tuple(lines[2 : 2 + count])
    sizes = tuple(map(int, lines[2 + count].split()))
    vsizes = tuple(map(int, lines[3 + count].split()))
    uidls = tuple(lines[4 + count : 4 + 2 * count])
    if len(sizes) != count or len(vsizes) != count:
        raise ValueError("columns of different lengths")
    # Every location is "new/NAME" or "cur/NAME" with one "/": counted over the
    # whole block at once, as a check per line would cost as much as a scan.
    block = "\n" + "\n".join(locations)
    folders = block.count("\nnew/") + block.count("\ncur/")
    if folders != count or block.count("/") != count:
        raise ValueError("a location outside new/ and cur/")
    return Listing(tuple(fields[:3]), locations, sizes, vsizes, uidls)


def save_listing(maildir: Path, listing: Listing) -> None:
    """Write the listing to the Maildir (atomically; it is a cache, not fsynced)."""
    if any("\n" in location for location in listing.locations):
        return
    text = "\n".join(
        [
            _MAGIC,
            " ".join(map(str, [*listing.stamps, len(listing)])),
            *listing.locations,
            " ".join(map(str, listing.sizes)),
            " ".join(map(str, listing.vsizes)),
            *listing.uidls,
            "end",
        ]
    )
    temporary = maildir / f"{LISTING_FILE}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as stream:
            stream.write(text.encode("utf-8", "surrogateescape"))
        os.replace(temporary, maildir / LISTING_FILE)
    except OSError as error:
        # Only the next cold start is slower for it.
        log.info("maildir=%s listing file not written: %s", maildir, error)
        temporary.unlink(missing_ok=True)
