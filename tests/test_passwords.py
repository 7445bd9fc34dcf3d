"""Tests for mdcore.passwords: Dovecot schemes, failures, and doveadm both ways."""

import logging
import shutil
import subprocess

import pytest

from mdcore import passwords
from mdcore.passwords import (
    DEFAULT_SCHEME,
    UnknownSchemeError,
    hash_password,
    needs_rehash,
    scheme_of,
    verify_password,
)

# Hashes of "secret" as `doveadm pw -s SCHEME -p secret` (Dovecot 2.3) wrote them.
DOVEADM_ARGON2ID = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$yfzqdoPAo//SX7a39o67ag"
    "$7b3zsys/Jw0EyYq2PMhA/nZ27/qt8JDa5MNwiAOpbuY"
)
DOVEADM_BLF_CRYPT = (
    "{BLF-CRYPT}$2y$05$.KnSHtf4uToCfBjgHyiNLeqVpY9A.oYp09rYlVDeiZmeu/nzvr2TK"
)
DOVEADM_SHA512_HEX = (
    "bd2b1aaf7ef4f09be9f52ce2d8d599674d81aa9d6a4421696dc4d93dd0619d68"
    "2ce56b4d64a9ef097761ced99e0f67265b5f76085e5b0ee7ca4696b2ad6fe2b2"
)

KNOWN_HASHES = [
    DOVEADM_ARGON2ID,
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$Oh6D0VyGHOzqzCFs/cBRUA"
    "$VVmgmfn7VWW0XOrXix36OjgU4ALBIlsVMHbIJG1FAvQ",
    DOVEADM_BLF_CRYPT,
    DOVEADM_BLF_CRYPT.replace("$2y$", "$2a$"),
    DOVEADM_BLF_CRYPT.replace("$2y$", "$2b$"),
    "{SHA512-CRYPT}$6$crnQ.DbCvqOmQnFu$D9Sg7Zg1gAyYk25VfwoOKDw4l/Drw1xfBS3O.pFmGnQ"
    "YhSr1xtE3pRtSmklNaDj.ROnScfnZXrbCgDLARKiKt1",
    "{SHA256-CRYPT}$5$XMglu/6GKfFwO/b1$NZeYF5GuJjLmZFUaqk5mDfnWzPDtHZ/ST7kig2keBD3",
    "{SSHA512}G1WIDZHvkeVB0e1FYn7jCo1cnRhL3yxEkYIKBebQw5tVMpiid9NgoKdf2zVQ5upvw1IC"
    "okFpnha048j6k2mWOZfwihg=",
    "{SSHA512.HEX}27840a1df4ea83171313c8d909c46f3a37b28d7f11932175dc78014726c54f1b"
    "bfd3721dc195d2096bcfaf96812c17a3980c9bd9c398a42f51fcae0c9d052fbac989774a",
    "{SSHA256}an1P48Q9lMNdVISACBh/Yftl7fAqII0OGznMK0YoxAGlDVff",
    "{SSHA}ly3knLsC8sxor+K9mRVv24lZw2KDNieM",
    "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192C"
    "F5bDufKRpayrW/isg==",
    "{SHA512.hex}" + DOVEADM_SHA512_HEX,
    "{SHA512}" + DOVEADM_SHA512_HEX,
    "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    "{PLAIN}secret",
    "{plain}secret",
    "{CLEAR}secret",
    "{PLAIN.B64}c2VjcmV0",
]

# Hashes that name a scheme we know but cannot be read as that scheme.
MALFORMED_HASHES = [
    "secret",
    "{PLAIN",
    "{SSHA}c2hvcnQ=",
    "{SSHA512}not base64!",
    "{SSHA512.hex}zz",
    "{SHA512}c2hvcnQ=",
    "{SHA256}" + DOVEADM_SHA512_HEX,
    "{BLF-CRYPT}$2y$05$short",
    "{BLF-CRYPT}$2c$05$.KnSHtf4uToCfBjgHyiNLeqVpY9A.oYp09rYlVDeiZmeu/nzvr2TK",
    "{SHA512-CRYPT}$6$abc",
    "{SHA256-CRYPT}$6$crnQ.DbCvqOmQnFu$D9Sg7Zg1gAyYk25VfwoOKDw4l",
    "{ARGON2ID}$argon2id$garbage",
    "{ARGON2ID}$argon2d$v=19$m=65536,t=3,p=1$yfzqdoPAo//SX7a39o67ag$AAAA",
    "{ARGON2ID}" + DOVEADM_BLF_CRYPT.removeprefix("{BLF-CRYPT}"),
]

UNKNOWN_SCHEME_HASHES = ["{MD4}abcd", "{PLAIN.xyz}secret", "{}secret"]

MADE_SCHEMES = ["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT"]

needs_doveadm = pytest.mark.skipif(
    shutil.which("doveadm") is None,
    reason="doveadm (Dovecot) is not installed, so no cross-check against it",
)


def doveadm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `doveadm` with an empty config, so no local dovecot.conf is read."""
    return subprocess.run(
        ["doveadm", "-c", "/dev/null", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def prefix_of(stored: str) -> str:
    """Name a test case by the {SCHEME} prefix of its hash."""
    return stored.partition("}")[0] + "}"


@pytest.fixture
def dummy_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record each spend of dummy work, in place of the slow Argon2 check."""
    calls: list[bytes] = []
    monkeypatch.setattr(passwords, "_spend_dummy_work", calls.append)
    return calls


@pytest.mark.parametrize("stored", KNOWN_HASHES, ids=prefix_of)
def test_known_hash_verifies_right_password_only(stored: str) -> None:
    """A Dovecot-made hash of "secret" accepts "secret" and nothing else."""
    assert verify_password(stored, "secret") is True
    assert verify_password(stored, "Secret") is False
    assert verify_password(stored, "") is False


@pytest.mark.parametrize("scheme", MADE_SCHEMES)
def test_round_trip(scheme: str) -> None:
    """A hash we make carries its scheme and verifies only its own password."""
    stored = hash_password("pässwörd €", scheme)

    assert stored.startswith("{" + scheme + "}")
    assert scheme_of(stored) == scheme
    assert verify_password(stored, "pässwörd €") is True
    assert verify_password(stored, "passwörd €") is False


def test_default_hash_uses_dovecot_parameters() -> None:
    """A new default hash is Argon2id, m=64 MiB, t=3, p=1, and needs no rehash."""
    stored = hash_password("secret")

    assert DEFAULT_SCHEME == "ARGON2ID"
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert needs_rehash(stored) is False


def test_salts_differ() -> None:
    """Two hashes of one password differ, so equal passwords do not show."""
    assert hash_password("same", "SHA512-CRYPT") != hash_password(
        "same", "SHA512-CRYPT"
    )


def test_bcrypt_long_password_cut_at_72_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """BLF-CRYPT reads 72 bytes of a longer password, as crypt_blowfish does."""
    monkeypatch.setattr(passwords, "_BCRYPT_COST", 4)
    stored = hash_password("a" * 100, "BLF-CRYPT")

    assert verify_password(stored, "a" * 72) is True
    assert verify_password(stored, "a" * 71) is False


@pytest.mark.parametrize("scheme", ["MD5", "SSHA512", "PLAIN", "ARGON2ID.hex", ""])
def test_hash_unknown_scheme_raises(scheme: str) -> None:
    """We refuse to make a hash in a scheme outside the ones we write."""
    with pytest.raises(UnknownSchemeError):
        hash_password("secret", scheme)


def test_hash_nul_password_raises() -> None:
    """A password with a NUL byte cannot reach Dovecot, so it is refused."""
    with pytest.raises(ValueError, match="NUL"):
        hash_password("sec\0ret", "SHA512-CRYPT")


def test_unknown_user_does_default_work() -> None:
    """An unknown user fails after a real check against the dummy Argon2id hash."""
    checked: list[bytes] = []
    real_check = passwords._check_argon2

    def spy(stored: bytes, password: bytes) -> bool:
        checked.append(stored)
        return real_check(stored, password)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_check_argon2", spy)
        assert verify_password(None, "secret") is False

    assert len(checked) == 1
    assert checked[0].startswith(b"$argon2id$v=19$m=65536,t=3,p=1$")


@pytest.mark.parametrize("stored", MALFORMED_HASHES, ids=prefix_of)
def test_malformed_hash_fails_with_dummy_work(
    stored: str, dummy_calls: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed hash fails, spends the dummy work, and logs without the hash."""
    with caplog.at_level(logging.WARNING, logger="mdcore.passwords"):
        assert verify_password(stored, "secret") is False

    assert dummy_calls == [b"secret"]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "malformed" in caplog.text
    hash_text = stored.partition("}")[2] or stored
    assert hash_text not in caplog.text


@pytest.mark.parametrize("stored", UNKNOWN_SCHEME_HASHES)
def test_unknown_scheme_fails_without_raising(
    stored: str, dummy_calls: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A hash in a scheme we do not know fails, logged, with the dummy work."""
    with caplog.at_level(logging.WARNING, logger="mdcore.passwords"):
        assert verify_password(stored, "secret") is False

    assert dummy_calls == [b"secret"]
    assert "unknown scheme=" in caplog.text
    assert stored.partition("}")[2] not in caplog.text


@pytest.mark.parametrize("password", ["secret\0", "sec\ud800ret"])
def test_unusable_password_never_matches(
    password: str, dummy_calls: list[bytes]
) -> None:
    """A password holding NUL or a lone surrogate fails, still spending the work."""
    assert verify_password("{PLAIN}secret\0", password) is False
    assert len(dummy_calls) == 1


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("{ssha512.hex}00", "SSHA512.HEX"),
        ("{BLF-CRYPT}$2y$05$x", "BLF-CRYPT"),
        ("{MD4}x", "MD4"),
    ],
)
def test_scheme_of(stored: str, scheme: str) -> None:
    """scheme_of names the scheme upper-cased, with any encoding suffix."""
    assert scheme_of(stored) == scheme


def test_scheme_of_without_prefix_raises() -> None:
    """A hash with no {SCHEME} prefix has no scheme to name."""
    with pytest.raises(ValueError):
        scheme_of("$2y$05$x")


@pytest.mark.parametrize(
    "stored",
    [
        "{ARGON2ID}$argon2id$v=19$m=32768,t=3,p=1$yfzqdoPAo//SX7a39o67ag"
        "$7b3zsys/Jw0EyYq2PMhA/nZ27/qt8JDa5MNwiAOpbuY",
        "{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$yfzqdoPAo//SX7a39o67ag"
        "$7b3zsys/Jw0EyYq2PMhA/nZ27/qt8JDa5MNwiAOpbuY",
        "{ARGON2I}" + DOVEADM_ARGON2ID.removeprefix("{ARGON2ID}"),
        DOVEADM_BLF_CRYPT,
        "{PLAIN}secret",
        "{ARGON2ID}$argon2id$garbage",
        "no prefix",
    ],
)
def test_needs_rehash(stored: str) -> None:
    """Anything but ARGON2ID with Dovecot's parameters asks for a rehash."""
    assert needs_rehash(stored) is True


def test_doveadm_default_hash_needs_no_rehash() -> None:
    """doveadm's own ARGON2ID hash matches our parameters exactly."""
    assert needs_rehash(DOVEADM_ARGON2ID) is False


@needs_doveadm
@pytest.mark.parametrize("scheme", MADE_SCHEMES)
def test_doveadm_verifies_our_hash(scheme: str) -> None:
    """doveadm pw -t accepts our hash with its password and refuses a wrong one."""
    stored = hash_password("pässwörd €", scheme)

    right = doveadm("pw", "-t", stored, "-p", "pässwörd €")
    assert (right.returncode, right.stdout) == (0, f"{stored} (verified)\n")

    wrong = doveadm("pw", "-t", stored, "-p", "passwörd €")
    assert wrong.returncode != 0


@needs_doveadm
def test_doveadm_verifies_our_long_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """doveadm cuts a long BLF-CRYPT password at 72 bytes the way we do."""
    monkeypatch.setattr(passwords, "_BCRYPT_COST", 4)
    stored = hash_password("b" * 100, "BLF-CRYPT")

    assert doveadm("pw", "-t", stored, "-p", "b" * 72).returncode == 0


@needs_doveadm
@pytest.mark.parametrize(
    "scheme",
    [
        "ARGON2ID",
        "BLF-CRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "SSHA512",
        "SSHA512.hex",
        "SSHA256",
        "PLAIN",
        "PLAIN.b64",
    ],
)
def test_we_verify_doveadm_hash(scheme: str) -> None:
    """A hash doveadm pw -s makes verifies here with its password only."""
    made = doveadm("pw", "-s", scheme, "-p", "pässwörd €")
    assert made.returncode == 0, made.stderr
    stored = made.stdout.strip()

    assert scheme_of(stored) == scheme.upper()
    assert verify_password(stored, "pässwörd €") is True
    assert verify_password(stored, "passwörd €") is False


@needs_doveadm
def test_we_verify_doveadm_long_bcrypt() -> None:
    """A doveadm BLF-CRYPT hash of a 100-byte password verifies here."""
    made = doveadm("pw", "-s", "BLF-CRYPT", "-p", "c" * 100)
    assert made.returncode == 0, made.stderr

    assert verify_password(made.stdout.strip(), "c" * 100) is True


@pytest.mark.parametrize("rounds", [5000, 12345])
def test_c_library_and_libpass_agree_on_sha_crypt(rounds: int) -> None:
    """crypt(3) gives libpass's strings, so the two checks accept the same passwords."""
    from passlib.hash import sha256_crypt, sha512_crypt

    from mdcore import crypt3

    if not crypt3.available():
        pytest.skip("this C library has no crypt_rn")
    for handler in (sha512_crypt, sha256_crypt):
        password = "pässword ✓"
        stored = handler.using(rounds=rounds).hash(password)
        assert crypt3.crypt(password.encode(), stored.encode()) == stored.encode()
        assert crypt3.crypt(b"password", stored.encode()) != stored.encode()
    assert crypt3.crypt(b"nul\0inside", b"$6$salt$") is None
