"""End-to-end tests of the mdmail command, run as a real process on a scratch state."""

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mdcore.accounts import parse_line
from mdcore.admin import Admin
from mdcore.config import DEFAULT_CONFIG
from mdcore.errors import MdmailError
from mdcore.layout import StateRoot, hosted_domains
from mdcore.namespace import Registry
from mdcore.passwords import verify_password
from mdcore.resolve import Outcome, resolve
from mdmail.cli import build_parser
from tests.conftest import SECRET_HASH

# Every change is bounded by this; a run that takes longer has hung.
TIMEOUT = 60

Snapshot = dict[str, bytes | None]


def mdmail(
    state: Path, *args: str, stdin: str = "", config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run mdmail on a state root as its own process; passwords go on stdin."""
    options = ["--config", str(config)] if config else []
    command = [sys.executable, "-m", "mdmail", *options, "--state-root", str(state)]
    environment = {k: v for k, v in os.environ.items() if k != "MDMAIL_CONFIG"}
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )


def ok(state: Path, *args: str, stdin: str = "") -> str:
    """Run mdmail, require success and no stderr, and return its stdout."""
    result = mdmail(state, *args, stdin=stdin)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def ok_json(state: Path, *args: str, stdin: str = "") -> Any:
    """Run mdmail --json and parse what it printed."""
    return json.loads(ok(state, "--json", *args, stdin=stdin))


def snapshot(top: Path) -> Snapshot:
    """Every path under top with its bytes (None for a folder)."""
    found: Snapshot = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), top)] = None
        for name in files:
            path = Path(folder, name)
            found[os.path.relpath(path, top)] = path.read_bytes()
    return found


def passwd_accounts(state: Path, domain: str) -> dict[str, str]:
    """Account name -> stored hash, parsed from the domain's passwd file."""
    text = (state / "domains" / domain / "passwd").read_text(encoding="utf-8")
    return {
        account.name: account.password for account in map(parse_line, text.splitlines())
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Path of a state root that does not exist yet."""
    return tmp_path / "state"


@pytest.fixture
def hosted(state: Path) -> Admin:
    """x.test with account foo ("secret") and alias sales, and an empty y.test."""
    admin = Admin(StateRoot(state))
    admin.add_domain("x.test")
    admin.add_domain("y.test")
    admin.add_account("x.test", "foo", SECRET_HASH, hashed=True)
    admin.add_alias("x.test", "sales", ["foo", "partner@elsewhere.test"])
    return admin


# --help


def command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The words of every command and action the parser knows, itself first."""
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from command_paths(child, (*prefix, name))


COMMANDS = list(command_paths(build_parser()))


def test_parser_knows_every_documented_command() -> None:
    """Scenario: each command of the brief is in the parser, so --help covers it."""
    documented = {
        *[("domain", action) for action in ("add", "remove", "list", "show", "set")],
        *[
            ("account", action)
            for action in ("add", "remove", "passwd", "quota", "list", "show")
        ],
        *[
            ("alias", action)
            for action in ("add", "remove", "list", "catch-all", "domain")
        ],
        ("import",),
        ("resolve",),
        ("demo",),
    }
    assert documented <= set(COMMANDS)


@pytest.fixture(scope="module")
def help_pages(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, ...], tuple[int, str, str]]:
    """Exit status, stdout and stderr of --help for every command, run side by side."""
    state = tmp_path_factory.mktemp("help") / "state"
    base = [sys.executable, "-m", "mdmail", "--state-root", str(state)]
    running = {
        words: subprocess.Popen(
            [*base, *words, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for words in COMMANDS
    }
    pages = {}
    for words, child in running.items():
        stdout, stderr = child.communicate(timeout=TIMEOUT)
        pages[words] = (child.returncode, stdout, stderr)
    assert not state.exists()
    return pages


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "-")
def test_help(
    help_pages: dict[tuple[str, ...], tuple[int, str, str]], words: tuple[str, ...]
) -> None:
    """Scenario: --help of a command prints its usage and exits 0, state untouched."""
    status, stdout, stderr = help_pages[words]

    assert (status, stderr) == (0, "")
    assert stdout.startswith(" ".join(["usage: mdmail", *words]))


# Domains


def test_domain_lifecycle(state: Path) -> None:
    """Scenario: add, list, show, set and remove (archived) a domain."""
    assert ok(state, "domain", "add", "x.test", "--set", "description=X Corp.") == (
        f"added x.test ({state.resolve()}/domains/x.test)\n"
    )
    ok(state, "domain", "add", "y.test")
    assert ok(state, "domain", "list") == "x.test\ny.test\n"

    shown = ok_json(state, "domain", "show", "x.test")
    assert shown["settings"]["description"] == "X Corp."
    assert ok(state, "domain", "set", "x.test", "default_quota_bytes=1000") == (
        "changed x.test\n"
    )
    shown = ok_json(state, "domain", "show", "x.test")
    assert shown["settings"]["default_quota_bytes"] == 1000

    assert ok(state, "domain", "remove", "x.test").startswith(
        f"removed x.test: archived in {state.resolve()}/archive/x.test."
    )
    assert not (state / "domains" / "x.test").exists()
    (archived,) = (state / "archive").iterdir()
    assert archived.name.startswith("x.test.")
    assert "X Corp." in (archived / "settings.yaml").read_text(encoding="utf-8")
    assert ok(state, "domain", "list") == "y.test\n"


def test_domain_remove_purge(state: Path) -> None:
    """Scenario: remove --purge deletes the tree and archives nothing."""
    ok(state, "domain", "add", "x.test")
    ok(state, "alias", "domain", "old.test", "x.test")

    assert ok(state, "domain", "remove", "--purge", "x.test") == (
        "removed x.test: purged\n"
    )
    assert not (state / "domains" / "x.test").exists()
    assert not (state / "archive").exists()
    assert ok_json(state, "domain", "list") == {"domains": [], "domain_aliases": {}}


def test_domain_idna_forms_are_one_domain(state: Path) -> None:
    """Scenario: bücher.example and its A-label are the same domain."""
    tree = f"{state.resolve()}/domains/xn--bcher-kva.example"
    assert ok(state, "domain", "add", "bücher.example") == (
        f"added xn--bcher-kva.example ({tree})\n"
    )
    before = snapshot(state)

    for name in ("xn--bcher-kva.example", "BÜCHER.example"):
        result = mdmail(state, "domain", "add", name)
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            "",
            "mdmail: error: domain xn--bcher-kva.example already exists\n",
        )
    assert snapshot(state) == before
    assert ok(state, "domain", "list") == ("xn--bcher-kva.example (bücher.example)\n")
    shown = ok_json(state, "domain", "show", "xn--bcher-kva.example")
    assert ok_json(state, "domain", "show", "bücher.example") == shown


def test_domain_json_fields(state: Path) -> None:
    """Scenario: --json output of each domain action parses with its fields."""
    path = f"{state.resolve()}/domains/x.test"
    assert ok_json(state, "domain", "add", "x.test") == {
        "domain": "x.test",
        "path": path,
    }
    ok(state, "alias", "domain", "old.test", "x.test")
    assert ok_json(state, "domain", "list") == {
        "domains": ["x.test"],
        "domain_aliases": {"old.test": "x.test"},
    }

    shown = ok_json(state, "domain", "show", "x.test")
    assert set(shown) == {
        "domain",
        "display",
        "path",
        "accounts",
        "aliases",
        "settings",
    }
    assert shown["domain"] == shown["display"] == "x.test"
    assert (shown["path"], shown["accounts"], shown["aliases"]) == (path, 0, 0)
    changed = ok_json(state, "domain", "set", "x.test", "refused_senders=a@b.test")
    assert changed == shown["settings"] | {"refused_senders": ["a@b.test"]}

    removed = ok_json(state, "domain", "remove", "x.test")
    assert set(removed) == {"domain", "archive"}
    assert Path(removed["archive"]).parent == state.resolve() / "archive"


# Accounts


def test_account_lifecycle(state: Path) -> None:
    """Scenario: add, passwd, quota, list, show and remove an account."""
    ok(state, "domain", "add", "x.test")
    added = ok(
        state,
        "account",
        "add",
        "Foo@X.test",
        "--quota-bytes",
        "500M",
        stdin="first secret\n",
    )
    assert added == "added foo@x.test\n"
    assert verify_password(passwd_accounts(state, "x.test")["foo"], "first secret")
    maildir = state / "domains" / "x.test" / "mail" / "foo" / "Maildir"
    assert sorted(path.name for path in maildir.iterdir()) == ["cur", "new", "tmp"]

    ok(state, "account", "passwd", "foo@x.test", stdin="second secret\n")
    stored = passwd_accounts(state, "x.test")["foo"]
    assert verify_password(stored, "second secret")
    assert not verify_password(stored, "first secret")

    assert ok(state, "account", "quota", "foo@x.test", "--quota-messages", "100") == (
        "foo@x.test [active] 524288000 bytes, 100 messages\n"
    )
    ok(state, "account", "quota", "foo@x.test", "--quota-bytes", "2G")
    assert ok(state, "account", "list", "x.test") == (
        "foo@x.test [active] 2147483648 bytes, 100 messages\n"
    )
    assert ok(state, "account", "quota", "foo@x.test", "--unlimited") == (
        "foo@x.test [active] no quota\n"
    )
    assert ok(state, "account", "show", "foo@x.test") == (
        f"foo@x.test [active] no quota\nmaildir: {maildir.resolve()}\n"
    )

    removed = ok(state, "account", "remove", "foo@x.test")
    assert removed.startswith(
        f"removed foo@x.test: mail archived in {state.resolve()}/archive/x.test.foo."
    )
    assert passwd_accounts(state, "x.test") == {}
    (archived,) = (state / "archive").iterdir()
    assert (archived / "Maildir" / "cur").is_dir()


def test_account_remove_purge(hosted: Admin, state: Path) -> None:
    """Scenario: account remove --purge deletes the mail instead of archiving it."""
    assert ok(state, "account", "remove", "--purge", "foo@x.test") == (
        "removed foo@x.test: mail deleted\n"
    )
    assert not (state / "domains" / "x.test" / "mail" / "foo").exists()
    assert not (state / "archive").exists()


def test_account_json_fields(hosted: Admin, state: Path) -> None:
    """Scenario: --json of account actions parses, with the hash never printed."""
    expected: dict[str, object] = {
        "name": "foo",
        "password": "{BLF-CRYPT}...",
        "uid": None,
        "gid": None,
        "quota_bytes": None,
        "quota_messages": 7,
        "state": "active",
        "extra": {},
    }
    assert ok_json(
        state, "account", "quota", "foo@x.test", "--quota-messages", "7"
    ) == (expected)
    assert ok_json(state, "account", "list", "x.test") == [expected]
    maildir = state.resolve() / "domains" / "x.test" / "mail" / "foo" / "Maildir"
    assert ok_json(state, "account", "show", "foo@x.test") == expected | {
        "maildir": str(maildir)
    }
    added = ok_json(state, "account", "add", "bar@x.test", stdin="secret\n")
    assert added["password"] == "{ARGON2ID}..."


# Aliases


def test_alias_add_list_remove(hosted: Admin, state: Path) -> None:
    """Scenario: targets are added, listed and removed one at a time, then all."""
    assert ok(state, "alias", "add", "sales@x.test", "Other@Y.TEST") == (
        "sales@x.test -> foo, partner@elsewhere.test, Other@y.test\n"
    )
    assert ok(state, "alias", "add", "team@x.test", "sales") == "team@x.test -> sales\n"
    assert ok(state, "alias", "list", "x.test") == (
        "sales@x.test -> foo, partner@elsewhere.test, Other@y.test\n"
        "team@x.test -> sales\n"
    )
    assert ok_json(state, "alias", "list", "x.test") == {
        "sales": ["foo", "partner@elsewhere.test", "Other@y.test"],
        "team": ["sales"],
    }

    ok(state, "alias", "remove", "sales@x.test", "partner@elsewhere.test")
    assert hosted.aliases("x.test")["sales"] == ("foo", "Other@y.test")
    ok(state, "alias", "remove", "team@x.test")
    assert hosted.aliases("x.test") == {"sales": ("foo", "Other@y.test")}


def test_catch_all_and_alias_domain(hosted: Admin, state: Path) -> None:
    """Scenario: a catch-all and an alias domain are set, listed and removed."""
    assert ok(state, "alias", "catch-all", "y.test", "foo@x.test") == (
        "catch-all of y.test -> foo@x.test\n"
    )
    assert ok(state, "alias", "list", "y.test") == "(catch-all)@y.test -> foo@x.test\n"
    assert ok(state, "alias", "domain", "old.test", "x.test") == (
        "old.test now delivers as x.test\n"
    )
    assert ok(state, "domain", "list") == (
        "x.test\ny.test\nold.test -> x.test (alias domain)\n"
    )

    assert ok(state, "alias", "catch-all", "y.test") == "removed catch-all of y.test\n"
    assert hosted.aliases("y.test") == {}
    assert ok(state, "alias", "domain", "old.test") == "removed alias domain old.test\n"
    assert hosted.domain_aliases() == {}


def test_resolve_each_outcome(hosted: Admin, state: Path) -> None:
    """Scenario: mdmail resolve prints what each kind of address means."""
    hosted.add_alias("y.test", "@", ["foo@x.test"])
    hosted.add_domain_alias("old.test", "x.test")
    addresses = [
        "foo@x.test",
        "FOO@X.TEST",
        "foo+news@x.test",
        "sales@x.test",
        "anything@y.test",
        "foo@old.test",
        "nobody@x.test",
        "foo@elsewhere.test",
        "../etc@x.test",
    ]
    printed = ok(state, "resolve", *addresses)
    assert printed.startswith(
        "foo@x.test: account -> foo@x.test\n"
        "FOO@X.TEST: account -> foo@x.test\n"
        "foo+news@x.test: account -> foo@x.test\n"
        "sales@x.test: alias -> foo@x.test, partner@elsewhere.test\n"
        "anything@y.test: alias -> foo@x.test\n"
        "foo@old.test: account -> foo@x.test\n"
        "nobody@x.test: unknown-user\n"
        "foo@elsewhere.test: not-hosted\n"
        "../etc@x.test: invalid (local part '../etc' "
    )
    assert printed.endswith(")\n")
    assert printed.count("\n") == len(addresses)
    assert ok_json(state, "resolve", "foo+news@x.test") == [
        {
            "address": "foo+news@x.test",
            "outcome": "account",
            "domain": "x.test",
            "local": "foo",
            "detail": "news",
            "mailboxes": ["foo@x.test"],
            "external": [],
            "reason": "",
        }
    ]


def test_demo(tmp_path: Path) -> None:
    """Scenario: the demo builds its own state under the working folder and runs."""
    result = subprocess.run(
        [sys.executable, "-m", "mdmail", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    # The demo's own log lines may go to stderr: only the outcome is checked here.
    assert result.returncode == 0, result.stderr
    assert "foo@abc.example with password 'abc-secret': accepted\n" in result.stdout
    assert "foo@xyz.example with password 'abc-secret': refused\n" in result.stdout
    assert (tmp_path / "demo-state" / "domains" / "abc.example").is_dir()


# Bad input: one line on stderr, exit status 1, nothing changed on disk


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state root the bad-input tests share: each checks it is left unchanged."""
    state = tmp_path_factory.mktemp("populated") / "state"
    admin = Admin(StateRoot(state))
    admin.add_domain("x.test")
    admin.add_domain("y.test")
    admin.add_account("x.test", "foo", SECRET_HASH, hashed=True)
    admin.add_alias("x.test", "sales", ["foo", "partner@elsewhere.test"])
    admin.add_alias("x.test", "loop1", ["loop2"])
    admin.add_alias("x.test", "a", ["b@y.test"])
    admin.add_alias("y.test", "@", ["nobody@x.test"])
    admin.add_domain_alias("old.test", "x.test")
    return state


LONG_DOMAIN = ".".join(["a" * 63] * 4) + ".test"

BAD_INPUT = [
    ("domain-slash", ["domain", "add", "a/b.test"], "invalid domain name 'a/b.test'"),
    ("domain-dotdot", ["domain", "add", "a..b.test"], "invalid domain name"),
    ("domain-parent", ["domain", "add", "../x.test"], "invalid domain name"),
    ("domain-space", ["domain", "add", "a b.test"], "invalid domain name"),
    ("domain-empty-label", ["domain", "add", ".a.test"], "invalid label ''"),
    ("domain-one-label", ["domain", "add", "test"], "at least two labels"),
    ("domain-too-long", ["domain", "add", LONG_DOMAIN], "longer than 253 octets"),
    ("label-too-long", ["domain", "add", "a" * 64 + ".test"], "invalid label"),
    ("domain-exists", ["domain", "add", "X.TEST"], "domain x.test already exists"),
    ("domain-is-alias", ["domain", "add", "old.test"], "already exists"),
    ("domain-not-hosted", ["domain", "show", "z.test"], "z.test is not hosted"),
    ("setting-unknown", ["domain", "add", "z.test", "--set", "bogus=1"], "bogus"),
    ("setting-type", ["domain", "set", "x.test", "uid=abc"], "uid: must be a whole"),
    ("setting-value", ["domain", "set", "x.test", "over_quota=drop"], "over_quota"),
    ("setting-pair", ["domain", "set", "x.test", "uid"], "'uid' is not KEY=VALUE"),
    ("setting-yaml", ["domain", "set", "x.test", "description=[no"], "description"),
    ("local-slash", ["account", "add", "a/b@x.test"], "local part 'a/b'"),
    ("local-control", ["account", "add", "a\x01b@x.test"], "local part 'a\\x01b'"),
    ("local-escape", ["account", "add", "a\x1bb@x.test"], "local part 'a\\x1bb'"),
    ("local-delete", ["account", "add", "a\x7fb@x.test"], "local part 'a\\x7fb'"),
    ("local-dots", ["account", "add", "a..b@x.test"], "local part 'a..b'"),
    ("local-too-long", ["account", "add", "a" * 65 + "@x.test"], "longer than 64"),
    ("no-domain", ["account", "add", "foo"], "is not local@domain"),
    ("account-exists", ["account", "add", "FOO@x.test"], "account foo@x.test already"),
    ("account-is-alias", ["account", "add", "sales@x.test"], "is already an alias"),
    ("account-domain", ["account", "add", "foo@z.test"], "z.test is not hosted"),
    ("account-missing", ["account", "remove", "bar@x.test"], "no account bar@x.test"),
    ("passwd-missing", ["account", "passwd", "bar@x.test"], "no account bar@x.test"),
    ("alias-is-account", ["alias", "add", "foo@x.test", "bar"], "already an account"),
    ("alias-loop", ["alias", "add", "loop2@x.test", "loop1"], "alias loop"),
    ("alias-self", ["alias", "add", "me@x.test", "me"], "alias loop"),
    ("alias-loop-domains", ["alias", "add", "b@y.test", "a@x.test"], "alias loop"),
    ("alias-loop-catch-all", ["alias", "catch-all", "x.test", "q@y.test"], "loop"),
    ("alias-target", ["alias", "add", "new@x.test", "a/b"], "alias target 'a/b'"),
    ("alias-missing", ["alias", "remove", "new@x.test"], "no alias new in x.test"),
    ("target-missing", ["alias", "remove", "sales@x.test", "bar"], "has no target"),
    ("alias-domain-taken", ["alias", "domain", "y.test", "x.test"], "y.test already"),
    ("alias-domain-none", ["alias", "domain", "new.test"], "is not an alias domain"),
]


@pytest.mark.parametrize(
    ("argv", "problem"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_changes_nothing(
    populated: Path, argv: list[str], problem: str
) -> None:
    """Scenario: a refused request prints one error line and changes no file."""
    before = snapshot(populated)

    result = mdmail(populated, *argv, stdin="secret\n")

    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("mdmail: error: ")
    assert problem in line
    assert snapshot(populated) == before


@pytest.mark.parametrize(
    ("stdin", "problem"),
    [
        ("\n", "empty password"),
        ("", "empty password"),
        ("se\0cret\n", "a password may not hold a NUL byte"),
    ],
    ids=["empty-line", "no-input", "nul"],
)
def test_bad_password_changes_nothing(
    populated: Path, stdin: str, problem: str
) -> None:
    """Scenario: an unusable password on stdin is refused before any change."""
    before = snapshot(populated)

    for argv in (["account", "add", "new@x.test"], ["account", "passwd", "foo@x.test"]):
        result = mdmail(populated, *argv, stdin=stdin)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"mdmail: error: {problem}\n"
    assert snapshot(populated) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["account", "quota", "foo@x.test", "--quota-bytes", "0"],
        ["account", "quota", "foo@x.test", "--quota-bytes", "5X"],
        ["account", "add", "new@x.test", "--quota-messages", "-1"],
        ["account", "add"],
        ["domain", "frobnicate"],
        ["no-such-command"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_usage_error_changes_nothing(populated: Path, argv: list[str]) -> None:
    """Scenario: a usage error exits 2 with argparse's message and changes no file."""
    before = snapshot(populated)

    result = mdmail(populated, *argv, stdin="secret\n")

    assert (result.returncode, result.stdout) == (2, "")
    assert "error: " in result.stderr.splitlines()[-1]
    assert snapshot(populated) == before


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "the top level must be a mapping of keys"),
        ("state_root: /srv\nbogus: 1\n", "bogus: unknown key"),
        ("lmtp:\n  max_sessions: many\n", "lmtp.max_sessions: must be a whole number"),
        ("state_root: 5\n", "state_root: must be text"),
        ("log: [info]\n", "log: must be a mapping"),
        ("lmtp: {listen: [\n", "not valid YAML"),
    ],
    ids=["list", "unknown-key", "wrong-type", "wrong-type-path", "not-mapping", "yaml"],
)
def test_bad_config_changes_nothing(
    populated: Path, tmp_path: Path, text: str, problem: str
) -> None:
    """Scenario: a broken --config file stops the command with one line naming it."""
    config = tmp_path / "mdmail.yaml"
    config.write_text(text, encoding="utf-8")
    before = snapshot(populated)

    result = mdmail(populated, "domain", "add", "new.test", config=config)

    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"mdmail: error: {config}: ")
    assert problem in line
    assert snapshot(populated) == before


def test_missing_config_file(populated: Path, tmp_path: Path) -> None:
    """Scenario: --config naming no file is one error line naming the file."""
    config = tmp_path / "absent.yaml"

    result = mdmail(populated, "domain", "list", config=config)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"mdmail: error: {config}: cannot read: No such file or directory\n"
    )


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists here")
def test_no_config_and_no_state_root(tmp_path: Path) -> None:
    """Scenario: without any config or --state-root the command says what to pass."""
    environment = {k: v for k, v in os.environ.items() if k != "MDMAIL_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "mdmail", "domain", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("mdmail: error: no configuration: ")
    assert os.listdir(tmp_path) == []


def test_config_file_gives_the_state_root(tmp_path: Path) -> None:
    """Scenario: a relative state_root in --config is taken from the file's folder."""
    config = tmp_path / "etc" / "mdmail.yaml"
    config.parent.mkdir()
    config.write_text("state_root: ../state\n", encoding="utf-8")
    command = [sys.executable, "-m", "mdmail", "--config", str(config)]

    result = subprocess.run(
        [*command, "domain", "add", "x.test"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "state" / "domains" / "x.test").is_dir()


BAD_NAMES = ["a\0b", "a/b", "..", "a\nb", "a" * 65]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_api_refuses_bad_local_part(populated: Path, name: str) -> None:
    """Scenario: the admin API refuses unsafe local parts, NUL included (no argv)."""
    admin = Admin(StateRoot(populated))
    before = snapshot(populated)
    changes: list[Callable[[], object]] = [
        lambda: admin.add_account("x.test", name, SECRET_HASH, hashed=True),
        lambda: admin.add_alias("x.test", name, ["foo"]),
        lambda: admin.add_alias("x.test", "new", [name]),
        lambda: admin.add_alias("x.test", "new", [f"{name}@y.test"]),
        lambda: admin.set_password("x.test", name, "secret"),
        lambda: admin.remove_account("x.test", name),
    ]
    for change in changes:
        with pytest.raises(MdmailError):
            change()
    assert snapshot(populated) == before


@pytest.mark.parametrize("name", ["a\0b.test", "a/b.test", "x.test\0.evil"], ids=repr)
def test_api_refuses_bad_domain(populated: Path, name: str) -> None:
    """Scenario: the admin API refuses unsafe domain names, NUL included."""
    admin = Admin(StateRoot(populated))
    before = snapshot(populated)
    for change in (
        lambda: admin.add_domain(name),
        lambda: admin.add_domain_alias(name, "x.test"),
        lambda: admin.add_account(name, "foo", SECRET_HASH, hashed=True),
    ):
        with pytest.raises(MdmailError):
            change()
    assert snapshot(populated) == before


def test_api_refuses_hash_breaking_the_line(populated: Path) -> None:
    """Scenario: a stored hash with ':' or a line break is refused, no Maildir made."""
    admin = Admin(StateRoot(populated))
    before = snapshot(populated)
    for stored in ("{PLAIN}a:b", "{PLAIN}a\nb"):
        with pytest.raises(MdmailError, match="may not contain"):
            admin.add_account("x.test", "new", stored, hashed=True)
    assert snapshot(populated) == before


# Concurrent admins, kill -9, running servers, ownership

# A child process that adds accounts with the admin API, as a second admin would.
# Arguments: state root, domain, name prefix, count (0: until killed).
ADDER = f"""
import itertools, sys
from pathlib import Path
from mdcore.admin import Admin
from mdcore.layout import StateRoot
root, domain, prefix, count = sys.argv[1:5]
admin = Admin(StateRoot(Path(root)))
sys.stdin.readline()
numbers = range(int(count)) if int(count) else itertools.count()
for number in numbers:
    admin.add_account(domain, f"{{prefix}}{{number}}", {SECRET_HASH!r}, hashed=True)
"""


def start_adder(
    state: Path, domain: str, prefix: str, count: int
) -> subprocess.Popen[str]:
    """Start a child adding accounts; it begins when a line arrives on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-c", ADDER, str(state), domain, prefix, str(count)],
        stdin=subprocess.PIPE,
        text=True,
    )


def go(child: subprocess.Popen[str]) -> None:
    """Let a started adder begin."""
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.close()


def test_two_admins_lose_no_account(hosted: Admin, state: Path) -> None:
    """Scenario: two processes each add 40 accounts at once; all 80 are there."""
    children = [start_adder(state, "x.test", prefix, 40) for prefix in ("a", "b")]
    for child in children:
        go(child)
    assert [child.wait(timeout=TIMEOUT) for child in children] == [0, 0]

    expected = {"foo"} | {f"{prefix}{n}" for prefix in "ab" for n in range(40)}
    names = [account.name for account in hosted.accounts("x.test")]
    assert sorted(names) == sorted(expected)
    assert set(passwd_accounts(state, "x.test")) == expected
    for name in expected:
        assert (
            state / "domains" / "x.test" / "mail" / name / "Maildir" / "new"
        ).is_dir()


def wait_for_lines(path: Path, count: int, child: subprocess.Popen[str]) -> None:
    """Wait until path has count lines, while the child still runs."""
    deadline = time.monotonic() + TIMEOUT
    while len(path.read_bytes().splitlines()) < count:
        assert child.poll() is None, "the adder stopped by itself"
        assert time.monotonic() < deadline, f"{path} never reached {count} lines"
        time.sleep(0.005)


def lock_is_free(path: Path) -> bool:
    """Whether an exclusive lock on path can be taken without waiting."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_kill_during_changes(hosted: Admin, state: Path) -> None:
    """Scenario: kill -9 in a run of changes leaves a whole passwd file, locks free."""
    tree = state / "domains" / "x.test"
    child = start_adder(state, "x.test", "u", 0)
    go(child)
    wait_for_lines(tree / "passwd", 6, child)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL

    lines = (tree / "passwd").read_text(encoding="utf-8").splitlines()
    names = [parse_line(line).name for line in lines]
    added = names[1:]
    assert names[0] == "foo"
    assert added == [f"u{n}" for n in range(len(added))]
    assert [account.name for account in hosted.accounts("x.test")] == names
    assert ok(state, "account", "list", "x.test").splitlines() == [
        f"{name}@x.test [active] no quota" for name in names
    ]
    assert hosted_domains(StateRoot(state)) == ["x.test", "y.test"]

    assert lock_is_free(tree / ".lock")
    assert lock_is_free(state / ".lock")
    hosted.add_account("x.test", "after", SECRET_HASH, hashed=True)
    assert hosted.account("x.test", "after").name == "after"


def test_running_server_sees_new_account(hosted: Admin, state: Path) -> None:
    """Scenario: a registry made before `account add` resolves the account within 1s."""
    registry = Registry(StateRoot(state.resolve()))
    assert resolve(registry, "new@x.test").outcome is Outcome.UNKNOWN_USER

    ok(state, "account", "add", "new@x.test", stdin="secret\n")

    deadline = time.monotonic() + 1.0
    outcome = resolve(registry, "new@x.test").outcome
    while outcome is not Outcome.ACCOUNT and time.monotonic() < deadline:
        time.sleep(0.01)
        outcome = resolve(registry, "new@x.test").outcome
    assert outcome is Outcome.ACCOUNT


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_domain_owner_applies_to_whole_tree(state: Path) -> None:
    """Scenario: uid/gid settings own every file and folder of the domain's tree."""
    ok(state, "domain", "add", "x.test", "--set", "uid=1234", "--set", "gid=1234")
    ok(state, "account", "add", "foo@x.test", stdin="secret\n")
    ok(state, "alias", "add", "sales@x.test", "foo")
    ok(state, "account", "quota", "foo@x.test", "--quota-bytes", "1G")

    tree = state / "domains" / "x.test"
    paths = [tree, *tree.rglob("*")]
    assert len(paths) > 10
    wrong = [
        str(path.relative_to(state))
        for path in paths
        if (path.lstat().st_uid, path.lstat().st_gid) != (1234, 1234)
    ]
    assert wrong == []
