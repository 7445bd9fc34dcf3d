"""A domain's password rules: minimum length, no common password, not the user name."""

import enum
import functools
from importlib import resources

from mdcore.settings import DomainSettings

COMMON_PASSWORDS_FILE = "common-passwords.txt"


class Weakness(enum.Enum):
    """Why a new password is refused; the value is what the page says."""

    TOO_SHORT = "The password is too short."
    COMMON = "That password is too common; choose another."
    USER_NAME = "The password may not be the user name."
    UNUSABLE = "The password may not hold control characters."


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased."""
    text = resources.files("mdweb").joinpath(COMMON_PASSWORDS_FILE).read_text("utf-8")
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def check_password(
    settings: DomainSettings, user: str, password: str
) -> Weakness | None:
    """The first rule the password breaks, or None when it is acceptable."""
    # A NUL or line break could never be typed at a POP3 client's prompt, and
    # Dovecot reads passwords as C strings.
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        return Weakness.UNUSABLE
    if len(password) < settings.password_min_length:
        return Weakness.TOO_SHORT
    if password.lower() == user.lower():
        return Weakness.USER_NAME
    if settings.refuse_common_passwords and password.lower() in common_passwords():
        return Weakness.COMMON
    return None
