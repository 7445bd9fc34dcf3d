"""Validation and normal forms of domain names, local parts and addresses.

Every name that becomes part of a path on disk passes through this module first, so
the rules here are what keeps one domain's files inside its own tree.
"""

import re
from typing import NamedTuple

import idna

from mdcore.errors import InvalidNameError

# RFC 1035 section 2.3.4 and RFC 5321 section 4.5.3.1.2: 255 octets on the wire is
# 253 characters in text form; a label is at most 63 octets.
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63

# RFC 5321 section 4.5.3.1.1: a local part is at most 64 octets.
MAX_LOCAL_LENGTH = 64

_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

# RFC 5322 section 3.2.3 atext, plus non-ASCII characters (RFC 6531 section 3.3
# extends atext with UTF-8 for SMTPUTF8 mail), less "/" and the C1 controls: a local
# part we store becomes a folder name, so it may hold no path separator, NUL,
# control character, white space or "@", even when it came quoted.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-=?^_`{|}~\u00a0-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")

_domain_cache: dict[str, str] = {}
_DOMAIN_CACHE_SIZE = 65536


class Address(NamedTuple):
    """An envelope address split into its local part and normalised domain."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalize_domain(text: str) -> str:
    """Return the lower-case IDNA A-label form of a domain, or raise an error."""
    cached = _domain_cache.get(text)
    if cached is not None:
        return cached

    normal = _normalize_domain_uncached(text)
    if len(_domain_cache) >= _DOMAIN_CACHE_SIZE:
        _domain_cache.clear()
    _domain_cache[text] = normal
    return normal


def _normalize_domain_uncached(text: str) -> str:
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise InvalidNameError("empty domain name")
    if any(char in name for char in "/\\\x00 \t\r\n") or ".." in name:
        raise InvalidNameError(f"invalid domain name {text!r}")

    name = name.lower() if name.isascii() else _to_a_labels(text, name)

    _check_labels(text, name)
    return name


def _to_a_labels(text: str, name: str) -> str:
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise InvalidNameError(f"invalid domain name {text!r}: {error}") from None


def _check_labels(text: str, name: str) -> None:
    if len(name) > MAX_DOMAIN_LENGTH:
        raise InvalidNameError(f"domain name longer than {MAX_DOMAIN_LENGTH} octets")

    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidNameError(f"domain name {text!r} needs at least two labels")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise InvalidNameError(f"invalid label {label!r} in domain name {text!r}")
        if label.startswith("xn--"):
            _check_a_label(text, label)


def _check_a_label(text: str, label: str) -> None:
    try:
        idna.decode(label)
    except idna.IDNAError:
        raise InvalidNameError(f"invalid IDNA label {label!r} in {text!r}") from None


def display_domain(domain: str) -> str:
    """Return the Unicode form of an A-label domain for people to read."""
    try:
        return str(idna.decode(domain))
    except idna.IDNAError:
        return domain


def check_local_part(local: str) -> str:
    """Return the local part unchanged if it is safe to store, else raise."""
    if not _DOT_ATOM.match(local):
        # Leading, trailing or doubled dots would also make names such as "." and
        # ".." that mean something else on disk.
        raise InvalidNameError(f"local part {local!r} is not a plain dot-atom")
    if len(local) > MAX_LOCAL_LENGTH or (
        not local.isascii() and len(local.encode("utf-8")) > MAX_LOCAL_LENGTH
    ):
        raise InvalidNameError(f"local part longer than {MAX_LOCAL_LENGTH} octets")
    return local


def fold_local(local: str, case_sensitive: bool) -> str:
    """Return the form of a local part used as a key in a domain's namespace."""
    return local if case_sensitive else local.lower()


def parse_address(raw: str) -> Address:
    """Split an envelope address (without angle brackets) into an Address.

    The domain is normalised; the local part is returned unquoted but otherwise as
    given, because case folding is a per-domain setting applied by the resolver.
    """
    return Address(*split_address(raw))


def split_address(raw: str) -> tuple[str, str]:
    """parse_address() as a plain (local, domain) pair: the resolver's fast path."""
    text = _strip_source_route(raw) if raw[:1] == "@" else raw
    local, _, domain = text.rpartition("@")
    if not local:
        raise InvalidNameError(f"address {raw!r} is not local@domain")

    if local[0] == '"':
        local = _unquote(raw, local)
    check_local_part(local)
    normal = _domain_cache.get(domain)
    return local, normal if normal is not None else normalize_domain(domain)


def _strip_source_route(raw: str) -> str:
    # RFC 5321 section 4.1.2 and appendix C: a source route ("@a,@b:user@c") must be
    # accepted and ignored.
    _, colon, rest = raw.partition(":")
    return rest if colon else raw


def _unquote(raw: str, local: str) -> str:
    # RFC 5321 section 4.1.2: Quoted-string = DQUOTE *QcontentSMTP DQUOTE, where
    # a backslash quotes the next character.
    if len(local) < 2 or not local.endswith('"'):
        raise InvalidNameError(f"unbalanced quotes in address {raw!r}")

    body = local[1:-1]
    out: list[str] = []
    escaped = False
    for char in body:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise InvalidNameError(f"stray quote in address {raw!r}")
        else:
            out.append(char)
    if escaped:
        raise InvalidNameError(f"dangling backslash in address {raw!r}")
    return "".join(out)
