"""Resolution of addresses through the per-domain namespaces."""

import pytest

from mdcore.admin import Admin
from mdcore.namespace import Registry
from mdcore.resolve import Mailbox, Outcome, resolve
from tests.conftest import SECRET_HASH


@pytest.fixture
def hosted(admin: Admin) -> Admin:
    """Two domains sharing the user name foo, with aliases of every kind."""
    admin.add_domain("abc.example")
    admin.add_domain("xyz.example")
    admin.add_domain("strict.example", {"case_sensitive_local_parts": True})
    admin.add_domain("dash.example", {"recipient_delimiter": "-+"})
    for domain, name in [
        ("abc.example", "foo"),
        ("abc.example", "bar"),
        ("xyz.example", "foo"),
        ("strict.example", "Foo"),
        ("dash.example", "foo"),
    ]:
        admin.add_account(domain, name, SECRET_HASH, hashed=True)
    admin.add_alias("abc.example", "sales", ["foo", "bar", "foo@xyz.example"])
    admin.add_alias("abc.example", "partners", ["someone@outside.example"])
    admin.add_alias("abc.example", "team", ["sales", "x@outside.example"])
    admin.add_alias("xyz.example", "@", ["foo"])
    admin.add_domain_alias("old-abc.example", "abc.example")
    return admin


def box(domain: str, account: str) -> Mailbox:
    """Shorthand for a Mailbox."""
    return Mailbox(domain, account)


@pytest.mark.parametrize(
    ("address", "outcome", "mailboxes", "external"),
    [
        ("foo@abc.example", Outcome.ACCOUNT, [box("abc.example", "foo")], []),
        ("foo@xyz.example", Outcome.ACCOUNT, [box("xyz.example", "foo")], []),
        ("FOO@Abc.Example", Outcome.ACCOUNT, [box("abc.example", "foo")], []),
        ("foo+tag@abc.example", Outcome.ACCOUNT, [box("abc.example", "foo")], []),
        ("foo@old-abc.example", Outcome.ACCOUNT, [box("abc.example", "foo")], []),
        ("Foo@strict.example", Outcome.ACCOUNT, [box("strict.example", "Foo")], []),
        ("foo@strict.example", Outcome.UNKNOWN_USER, [], []),
        ("foo-x@dash.example", Outcome.ACCOUNT, [box("dash.example", "foo")], []),
        ("foo+x@dash.example", Outcome.ACCOUNT, [box("dash.example", "foo")], []),
        (
            "sales@abc.example",
            Outcome.ALIAS,
            [
                box("abc.example", "foo"),
                box("abc.example", "bar"),
                box("xyz.example", "foo"),
            ],
            [],
        ),
        ("partners@abc.example", Outcome.ALIAS, [], ["someone@outside.example"]),
        (
            "team@abc.example",
            Outcome.ALIAS,
            [
                box("abc.example", "foo"),
                box("abc.example", "bar"),
                box("xyz.example", "foo"),
            ],
            ["x@outside.example"],
        ),
        ("anyone@xyz.example", Outcome.ALIAS, [box("xyz.example", "foo")], []),
        ("nobody@abc.example", Outcome.UNKNOWN_USER, [], []),
        ("foo@elsewhere.example", Outcome.NOT_HOSTED, [], []),
    ],
)
def test_resolution_table(
    hosted: Admin,
    registry: Registry,
    address: str,
    outcome: Outcome,
    mailboxes: list[Mailbox],
    external: list[str],
) -> None:
    """Each address resolves to the expected outcome and mailboxes."""
    result = resolve(registry, address)
    assert result.outcome is outcome
    assert list(result.mailboxes) == mailboxes
    assert list(result.external) == external


def test_detail_is_reported(hosted: Admin, registry: Registry) -> None:
    """The part after the delimiter is kept as the detail."""
    result = resolve(registry, "foo+news@abc.example")
    assert (result.local, result.detail) == ("foo", "news")


@pytest.mark.parametrize(
    "address",
    [
        "../foo@abc.example",
        "foo/../../xyz.example/mail/foo@abc.example",
        '"foo@xyz.example"@abc.example',
        "foo@xyz.example@abc.example",
        "foo@abc.example@xyz.example",
        "foo(comment)@abc.example",
        "foo@abc.example/../xyz.example",
        "foo%xyz.example@abc.example",
        "",
        "foo",
    ],
)
def test_tricks_never_reach_another_mailbox(
    hosted: Admin, registry: Registry, address: str
) -> None:
    """Path and address tricks are invalid or unknown, never someone's mailbox."""
    result = resolve(registry, address)
    assert result.outcome in (Outcome.INVALID, Outcome.UNKNOWN_USER)
    assert result.mailboxes == ()


def test_catch_all_does_not_catch_tricks(hosted: Admin, registry: Registry) -> None:
    """A catch-all takes unknown users, but invalid local parts stay invalid."""
    assert resolve(registry, "../etc@xyz.example").outcome is Outcome.INVALID
    assert resolve(registry, "foo%abc.example@xyz.example").mailboxes == (
        box("xyz.example", "foo"),
    )


def test_changes_are_seen_without_restart(hosted: Admin, registry: Registry) -> None:
    """A registry notices accounts added and removed after it loaded a domain."""
    assert resolve(registry, "new@abc.example").outcome is Outcome.UNKNOWN_USER
    hosted.add_account("abc.example", "new", SECRET_HASH, hashed=True)
    assert resolve(registry, "new@abc.example").outcome is Outcome.ACCOUNT
    hosted.remove_account("abc.example", "new")
    assert resolve(registry, "new@abc.example").outcome is Outcome.UNKNOWN_USER


def test_removed_domain_is_not_hosted(hosted: Admin, registry: Registry) -> None:
    """After domain remove, its addresses are no longer hosted."""
    assert resolve(registry, "foo@xyz.example").outcome is Outcome.ACCOUNT
    hosted.remove_domain("xyz.example")
    assert resolve(registry, "foo@xyz.example").outcome is Outcome.NOT_HOSTED
    sales = resolve(registry, "sales@abc.example")
    assert box("xyz.example", "foo") not in sales.mailboxes


def test_broken_settings_answer_unavailable(hosted: Admin, registry: Registry) -> None:
    """A domain whose files cannot be read is a temporary failure, not 'no such'."""
    hosted.tree("xyz.example").settings.write_text("- not a mapping\n")
    result = resolve(registry, "foo@xyz.example")
    assert result.outcome is Outcome.UNAVAILABLE


def test_broken_settings_keep_last_good_namespace(
    hosted: Admin, registry: Registry
) -> None:
    """A bad edit after a good load keeps serving the last good namespace."""
    assert resolve(registry, "foo@xyz.example").outcome is Outcome.ACCOUNT
    hosted.tree("xyz.example").settings.write_text("unknown_key: 1\n")
    hosted.add_account("abc.example", "poke", SECRET_HASH, hashed=True)
    assert resolve(registry, "foo@xyz.example").outcome is Outcome.ACCOUNT


def test_hand_made_alias_loop_is_bounded(hosted: Admin, registry: Registry) -> None:
    """A loop written by hand (the CLI refuses them) resolves to nothing, quickly."""
    tree = hosted.tree("abc.example")
    tree.aliases.write_text("a: b\nb: a\n")
    hosted.add_account("abc.example", "poke", SECRET_HASH, hashed=True)
    result = resolve(registry, "a@abc.example")
    assert result.outcome is Outcome.UNKNOWN_USER
    assert not result.deliverable
