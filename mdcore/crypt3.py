"""crypt(3) from the C library (libxcrypt's crypt_rn), where there is one.

SHA-512 and SHA-256 crypt strings, as Dovecot's SHA512-CRYPT and SHA256-CRYPT
store them, are 5,000 rounds of the hash: in Python (libpass's own code) that
takes twice as long as in C and holds the interpreter lock all along, so a
POP3 server checking them in threads uses one core. crypt_rn is reentrant (its
state lives in the buffer we pass) and ctypes releases the lock while it runs.
Where the library or the function is missing, `crypt` returns None and the
caller falls back to libpass.
"""

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

# Larger than libxcrypt's struct crypt_data (32,768 bytes); crypt_rn is told
# the size and fails rather than overrun a buffer that is too small.
_DATA_SIZE = 65536


@functools.cache
def _crypt_rn() -> Callable[..., bytes | None] | None:
    """The C function, or None where this C library has no crypt_rn."""
    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).crypt_rn
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_char_p
    function.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return function


def available() -> bool:
    """Whether crypt(3) can be used here."""
    return _crypt_rn() is not None


def crypt(password: bytes, setting: bytes) -> bytes | None:
    """The crypt string of password for setting (a stored hash); None if unusable.

    None also when the library refuses the setting (it returns a string that
    starts with "*" then), or the password holds NUL, which C strings cannot.
    """
    function = _crypt_rn()
    if function is None or b"\0" in password or b"\0" in setting:
        return None
    data = ctypes.create_string_buffer(_DATA_SIZE)
    result = function(password, setting, data, _DATA_SIZE)
    if not result or result.startswith(b"*"):
        return None
    return bytes(result)
