"""Dovecot-compatible password hashes, stored as "{SCHEME}hash" like passwd-file."""

import base64
import enum
import functools
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import VerificationError, VerifyMismatchError
from passlib.hash import sha256_crypt, sha512_crypt

from mdcore import crypt3

log = logging.getLogger(__name__)

DEFAULT_SCHEME: str = "ARGON2ID"

# Dovecot's own ARGON2ID parameters: 64 MiB, three passes, one lane so that a
# check keeps to one core; 16-byte salt and 32-byte output as doveadm writes them.
_ARGON2 = argon2.PasswordHasher(
    time_cost=3,
    memory_cost=65536,
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=argon2.Type.ID,
)

# bcrypt's own default cost; Dovecot's default of 5 is too cheap for new hashes.
_BCRYPT_COST = 12

# crypt_blowfish, which Dovecot uses for BLF-CRYPT, reads at most 72 key bytes.
_BCRYPT_KEY_LIMIT = 72

# Dovecot writes SHA512-CRYPT with the default 5000 rounds, left out of the string.
_SHA_CRYPT_ROUNDS = 5000

# What may be echoed of a scheme name in a log line: never any of the hash.
_LOGGABLE_SCHEME = re.compile(r"[A-Za-z0-9.-]{1,32}")

_Check = Callable[[bytes, bytes], bool]


class UnknownSchemeError(ValueError):
    """A stored hash names a scheme we cannot verify."""


class _MalformedHashError(ValueError):
    """A stored hash cannot be read the way its scheme says."""


class _Encoding(enum.Enum):
    """How the text after the {SCHEME} prefix carries the hash bytes."""

    NONE = "none"
    BASE64 = "base64"
    HEX = "hex"


@dataclass(frozen=True)
class _Scheme:
    """How one Dovecot scheme is checked: `check(decoded_hash, password)`."""

    check: _Check
    encoding: _Encoding = _Encoding.NONE
    digest_size: int = 0  # fixed decoded length; 0 when it varies


# Dovecot's encoding suffixes, as in "{SSHA512.hex}"; any other suffix makes the
# whole scheme unknown to Dovecot, and so to us.
_SUFFIXES = {"B64": _Encoding.BASE64, "BASE64": _Encoding.BASE64, "HEX": _Encoding.HEX}


def _check_argon2(stored: bytes, password: bytes) -> bool:
    """Check an Argon2i or Argon2id string; the string names its own variant."""
    # Dovecot verifies through libsodium, which reads the variant from the string,
    # so {ARGON2I} may hold an argon2id hash and {ARGON2ID} an argon2i one.
    if stored.startswith(b"$argon2id$"):
        variant = argon2.Type.ID
    elif stored.startswith(b"$argon2i$"):
        variant = argon2.Type.I
    else:
        raise _MalformedHashError("not an argon2i or argon2id string")

    try:
        return argon2.low_level.verify_secret(stored, password, variant)
    except VerifyMismatchError:
        return False
    except VerificationError as exc:
        raise _MalformedHashError("unreadable argon2 string") from exc


def _check_bcrypt(stored: bytes, password: bytes) -> bool:
    """Check a $2a$, $2b$ or $2y$ bcrypt string."""
    # bcrypt 5 refuses keys over 72 bytes; Dovecot cuts them, so cut them too.
    return bcrypt.checkpw(password[:_BCRYPT_KEY_LIMIT], stored)


# "$6$[rounds=N$]salt$checksum" (checksum 86 characters; 43 for "$5$").
_SHA_CRYPT_SHAPES = {
    prefix: re.compile(
        re.escape(prefix) + rb"(?:rounds=\d{1,9}\$)?[./0-9A-Za-z]{0,16}\$"
        rb"[./0-9A-Za-z]{%d}" % length
    )
    for prefix, length in ((b"$6$", 86), (b"$5$", 43))
}


def _check_sha512_crypt(stored: bytes, password: bytes) -> bool:
    """Check a $6$ SHA-512 crypt string."""
    found = _check_with_crypt3(stored, password, b"$6$")
    if found is not None:
        return found
    return bool(sha512_crypt.verify(password, stored.decode("ascii")))


def _check_sha256_crypt(stored: bytes, password: bytes) -> bool:
    """Check a $5$ SHA-256 crypt string."""
    found = _check_with_crypt3(stored, password, b"$5$")
    if found is not None:
        return found
    return bool(sha256_crypt.verify(password, stored.decode("ascii")))


def _check_with_crypt3(stored: bytes, password: bytes, prefix: bytes) -> bool | None:
    """The C library's answer for a crypt string, or None to ask libpass instead."""
    # Only a whole, well-formed string: libpass then reports a malformed one.
    shape = _SHA_CRYPT_SHAPES.get(prefix)
    if shape is None or not shape.fullmatch(stored):
        return None
    computed = crypt3.crypt(password, stored)
    if computed is None:
        return None
    return hmac.compare_digest(computed, stored)


def _salted(algorithm: str) -> _Check:
    """Make a check for the LDAP-style digest(password + salt) + salt form."""
    size = hashlib.new(algorithm).digest_size

    def check(stored: bytes, password: bytes) -> bool:
        if len(stored) <= size:
            raise _MalformedHashError("salted hash shorter than its digest")
        digest, salt = stored[:size], stored[size:]
        computed = hashlib.new(algorithm, password + salt).digest()
        return hmac.compare_digest(computed, digest)

    return check


def _unsalted(algorithm: str) -> _Check:
    """Make a check for a bare digest of the password."""

    def check(stored: bytes, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(algorithm, password).digest(), stored)

    return check


def _check_plain(stored: bytes, password: bytes) -> bool:
    """Check a password kept as it is."""
    return hmac.compare_digest(stored, password)


_SCHEMES: dict[str, _Scheme] = {
    "ARGON2ID": _Scheme(_check_argon2),
    "ARGON2I": _Scheme(_check_argon2),
    "BLF-CRYPT": _Scheme(_check_bcrypt),
    "SHA512-CRYPT": _Scheme(_check_sha512_crypt),
    "SHA256-CRYPT": _Scheme(_check_sha256_crypt),
    "SSHA512": _Scheme(_salted("sha512"), _Encoding.BASE64),
    "SSHA256": _Scheme(_salted("sha256"), _Encoding.BASE64),
    "SSHA": _Scheme(_salted("sha1"), _Encoding.BASE64),
    "SHA512": _Scheme(_unsalted("sha512"), _Encoding.BASE64, 64),
    "SHA256": _Scheme(_unsalted("sha256"), _Encoding.BASE64, 32),
    "PLAIN": _Scheme(_check_plain),
    "CLEAR": _Scheme(_check_plain),
    "CLEARTEXT": _Scheme(_check_plain),
}


def _make_bcrypt(secret: bytes) -> str:
    """Make a $2b$ string, which Dovecot's crypt_blowfish reads like $2y$."""
    salt = bcrypt.gensalt(rounds=_BCRYPT_COST)
    return bcrypt.hashpw(secret[:_BCRYPT_KEY_LIMIT], salt).decode("ascii")


def _make_sha512_crypt(secret: bytes) -> str:
    """Make a $6$ string with Dovecot's round count."""
    return str(sha512_crypt.using(rounds=_SHA_CRYPT_ROUNDS).hash(secret))


_MAKERS: dict[str, Callable[[bytes], str]] = {
    "ARGON2ID": _ARGON2.hash,
    "BLF-CRYPT": _make_bcrypt,
    "SHA512-CRYPT": _make_sha512_crypt,
}


def hash_password(password: str, scheme: str = DEFAULT_SCHEME) -> str:
    """Hash a password into the "{SCHEME}hash" form Dovecot's passwd-file keeps."""
    name = scheme.upper()
    maker = _MAKERS.get(name)
    if maker is None:
        raise UnknownSchemeError(f"cannot make {name} hashes")

    secret = password.encode("utf-8")
    if b"\0" in secret:
        raise ValueError("password holds a NUL byte, which Dovecot cannot receive")
    return f"{{{name}}}{maker(secret)}"


def _split(stored: str) -> tuple[str, str]:
    """Split "{SCHEME}hash" into the upper-cased scheme name and the hash text."""
    end = stored.find("}")
    if not stored.startswith("{") or end < 0:
        raise _MalformedHashError("no {SCHEME} prefix")
    return stored[1:end].upper(), stored[end + 1 :]


def scheme_of(stored: str) -> str:
    """Name the scheme of a stored hash, upper-cased, with any encoding suffix."""
    return _split(stored)[0]


def _lookup(name: str) -> tuple[_Scheme, _Encoding | None]:
    """Find a scheme and the encoding its suffix asks for (None: no suffix)."""
    base, _, suffix = name.partition(".")
    scheme = _SCHEMES.get(base)
    if scheme is None or (suffix and suffix not in _SUFFIXES):
        raise UnknownSchemeError(name)
    return scheme, _SUFFIXES[suffix] if suffix else None


def _decode(text: str, scheme: _Scheme, encoding: _Encoding | None) -> bytes:
    """Turn the hash text into the bytes the scheme's check reads."""
    if encoding is None:
        encoding = scheme.encoding
        # Like Dovecot, tell hex from base64 by length for fixed-size digests.
        if scheme.digest_size and len(text) == 2 * scheme.digest_size:
            encoding = _Encoding.HEX

    if encoding is _Encoding.HEX:
        raw = bytes.fromhex(text)
    elif encoding is _Encoding.BASE64:
        raw = base64.b64decode(text, validate=True)
    else:
        raw = text.encode("utf-8")

    if scheme.digest_size and len(raw) != scheme.digest_size:
        raise _MalformedHashError("digest of the wrong length")
    return raw


def _check(stored: str, secret: bytes) -> bool:
    """Check a secret against a stored hash; raise ValueError when unreadable."""
    name, text = _split(stored)
    scheme, encoding = _lookup(name)
    return scheme.check(_decode(text, scheme, encoding), secret)


@functools.cache
def _dummy_hash() -> bytes:
    """Make, once, a default-scheme hash of a random secret nobody knows."""
    return _ARGON2.hash(secrets.token_bytes(16)).encode("ascii")


def _spend_dummy_work(secret: bytes) -> None:
    """Spend the time of one default-scheme check, so failures cost what hits do."""
    # The first call also pays for making the dummy hash, once per process.
    _check_argon2(_dummy_hash(), secret)


def _password_bytes(password: str) -> bytes | None:
    """Encode a password as Dovecot receives it; None when no hash can match it."""
    # surrogateescape gives back the exact bytes of a password that a caller
    # decoded with it, as Dovecot compares bytes, not text.
    try:
        secret = password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None

    # A NUL ends the password in SASL PLAIN (RFC 4616 section 2) and in Dovecot's
    # C strings, so no stored hash can match a password that holds one.
    return None if b"\0" in secret else secret


def _scheme_for_log(stored: str) -> str:
    """Give the scheme name of a stored hash when it is safe to log, else '?'."""
    end = stored.find("}")
    name = stored[1:end] if stored.startswith("{") and end > 0 else ""
    return name.upper() if _LOGGABLE_SCHEME.fullmatch(name) else "?"


def verify_password(stored: str | None, password: str) -> bool:
    """Check a password against a stored hash; None stands for an unknown user."""
    secret = _password_bytes(password)
    if stored is None or secret is None:
        _spend_dummy_work(secret or b"")
        return False

    try:
        return _check(stored, secret)
    except UnknownSchemeError:
        log.warning(
            "password hash unusable: unknown scheme=%s", _scheme_for_log(stored)
        )
    except ValueError as exc:
        log.warning(
            "password hash unusable: malformed scheme=%s error=%s",
            _scheme_for_log(stored),
            type(exc).__name__,
        )
    _spend_dummy_work(secret)
    return False


def needs_rehash(stored: str) -> bool:
    """Tell whether a hash is anything but ARGON2ID with today's parameters."""
    try:
        name, text = _split(stored)
        if name != DEFAULT_SCHEME:
            return True
        return _ARGON2.check_needs_rehash(text)
    except ValueError:
        return True
