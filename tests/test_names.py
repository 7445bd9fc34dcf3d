"""Rules for domain names, local parts and envelope addresses."""

import pytest

from mdcore.errors import InvalidNameError
from mdcore.names import (
    check_local_part,
    display_domain,
    normalize_domain,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("abc.example", "abc.example"),
        ("ABC.Example", "abc.example"),
        ("abc.example.", "abc.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("1.2.example", "1.2.example"),
    ],
)
def test_domains_normalise_to_lower_case_a_labels(text: str, normal: str) -> None:
    """Case and IDNA forms of one domain come out as the same A-label name."""
    assert normalize_domain(text) == normal


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "abc/def.example",
        "../abc.example",
        "abc..example",
        "abc example.example",
        ".abc.example",
        "abc.example..",
        "localhost",
        "-abc.example",
        "abc-.example",
        "a_b.example",
        "abc.example\x00",
        ("a" * 64) + ".example",
        ".".join(["a" * 60] * 5),
        "xn--zzzzzzz-zzz.example",
    ],
)
def test_bad_domains_are_refused(text: str) -> None:
    """Each malformed or unsafe domain name raises InvalidNameError."""
    with pytest.raises(InvalidNameError):
        normalize_domain(text)


def test_longest_domain_is_accepted() -> None:
    """253 octets is the limit (RFC 1035 section 2.3.4), not one less."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_domain(name) == name
    with pytest.raises(InvalidNameError):
        normalize_domain("e" + name)


def test_display_domain_shows_unicode() -> None:
    """The A-label form is shown to people in Unicode."""
    assert display_domain("xn--bcher-kva.example") == "bücher.example"


@pytest.mark.parametrize(
    "local",
    ["foo", "Foo.Bar", "foo+tag", "o'neil", "ünïcode", "a" * 64, "x-y_z", "a%b"],
)
def test_good_local_parts(local: str) -> None:
    """Dot-atoms, including UTF-8 ones (RFC 6531), are accepted unchanged."""
    assert check_local_part(local) == local


@pytest.mark.parametrize(
    "local",
    [
        "",
        "a/b",
        "..",
        ".",
        ".hidden",
        "trail.",
        "two..dots",
        "nul\x00",
        "tab\there",
        "bell\x07",
        "del\x7f",
        "sp ace",
        "back\\slash",
        "at@sign",
        "a" * 65,
        "é" * 33,
        "com(ment)",
    ],
)
def test_bad_local_parts_are_refused(local: str) -> None:
    """Unsafe or malformed local parts raise InvalidNameError."""
    with pytest.raises(InvalidNameError):
        check_local_part(local)


@pytest.mark.parametrize(
    ("raw", "local", "domain"),
    [
        ("foo@abc.example", "foo", "abc.example"),
        ("Foo@ABC.EXAMPLE", "Foo", "abc.example"),
        ('"foo"@abc.example', "foo", "abc.example"),
        ('"f\\oo"@abc.example', "foo", "abc.example"),
        ("@relay.example:foo@abc.example", "foo", "abc.example"),
        ("@a.example,@b.example:foo@abc.example", "foo", "abc.example"),
        ("foo@bücher.example", "foo", "xn--bcher-kva.example"),
        ("foo%xyz.example@abc.example", "foo%xyz.example", "abc.example"),
    ],
)
def test_parse_address(raw: str, local: str, domain: str) -> None:
    """Quotes and source routes are undone; the domain is normalised."""
    address = parse_address(raw)
    assert (address.local, address.domain) == (local, domain)


@pytest.mark.parametrize(
    "raw",
    [
        "foo",
        "@abc.example",
        "foo@",
        "foo@a.example@b.example",
        '"foo@b.example"@a.example',
        '"../../etc"@a.example',
        '"foo bar"@a.example',
        '"unbalanced@a.example',
        "foo(comment)@a.example",
        "../x@a.example",
        "foo@../a.example",
        "foo@a.example/../b.example",
    ],
)
def test_address_tricks_are_refused(raw: str) -> None:
    """Addresses that could reach another domain or a path outside are invalid."""
    with pytest.raises(InvalidNameError):
        parse_address(raw)
