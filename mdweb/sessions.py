"""Sessions kept in a signed cookie: who is logged in, and the form (CSRF) token.

The cookie holds no secret, only names and a random token, signed with the
server's key so it cannot be forged or altered. A session also carries a tag
derived from the account's stored password hash: changing the password or
removing the account ends every other session of it.
"""

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

log = logging.getLogger(__name__)

COOKIE_NAME = "mdweb_session"
KEY_BYTES = 32


@dataclass(frozen=True)
class Session:
    """One browser's session: the domain it belongs to, the user, the CSRF token."""

    domain: str
    csrf: str
    user: str = ""
    tag: str = ""

    @property
    def logged_in(self) -> bool:
        """Whether a user is logged in."""
        return bool(self.user)

    def anonymous(self) -> "Session":
        """The same browser logged out, with a fresh CSRF token."""
        return Session(self.domain, new_token())


def new_token() -> str:
    """A fresh random CSRF token."""
    return secrets.token_urlsafe(24)


def fresh_session(domain: str) -> Session:
    """A new logged-out session for a domain."""
    return Session(domain, new_token())


def token_matches(session: Session, submitted: str) -> bool:
    """Whether a form's CSRF token is this session's (compared in constant time)."""
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted)


class SessionCodec:
    """Signs sessions into cookie values and reads them back."""

    def __init__(self, key: bytes, max_age: int) -> None:
        """Use this key for signatures; refuse cookies older than max_age seconds."""
        self.key = key
        self.max_age = max_age
        self.serializer = URLSafeTimedSerializer(key, salt="mdweb-session")

    def dumps(self, session: Session) -> str:
        """The cookie value for a session."""
        return str(self.serializer.dumps(asdict(session)))

    def loads(self, value: str, domain: str) -> Session | None:
        """The session in a cookie, or None if forged, expired or another domain's."""
        try:
            data = self.serializer.loads(value, max_age=self.max_age)
            session = Session(**data)
        except (BadSignature, TypeError):
            return None
        return session if session.domain == domain else None

    def tag(self, stored_password: str) -> str:
        """A short keyed digest of an account's stored password hash."""
        digest = hmac.new(self.key, stored_password.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def login(self, session: Session, user: str, stored_password: str) -> Session:
        """The session after a login: a new token, so an old one cannot be reused."""
        return replace(
            session, user=user, csrf=new_token(), tag=self.tag(stored_password)
        )


def load_key(path: str) -> bytes:
    """The signing key kept in path (made if missing); a fresh one for "" ."""
    if not path:
        log.warning("web: no secret_key_file set: sessions end when the server stops")
        return secrets.token_bytes(KEY_BYTES)
    key_path = Path(path)
    if not key_path.exists():
        # Another server starting at once may have made it first: use theirs.
        with contextlib.suppress(FileExistsError):
            _write_key(key_path)
    key = key_path.read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the key must be at least 16 bytes")
    return key


def _write_key(path: Path) -> None:
    # O_EXCL: two servers starting at once must not each write their own key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(secrets.token_hex(KEY_BYTES) + "\n")
