"""The reply table and command-line parsing of the LMTP core, piece by piece."""

from __future__ import annotations

import pytest

from lmtpd import replies
from lmtpd.commands import (
    CommandError,
    parse_bdat,
    parse_command,
    parse_mail,
    parse_params,
    parse_xforward,
)
from lmtpd.envelope import XForward
from lmtpd.replies import Reply

TABLE = [value for value in vars(replies).values() if isinstance(value, Reply)]


def test_single_line_reply() -> None:
    """A reply is code, enhanced code and text on one CRLF-terminated line."""
    assert replies.NO_SUCH_USER.to_bytes() == b"550 5.1.1 User unknown\r\n"


def test_multi_line_reply() -> None:
    """Every line but the last carries a hyphen after the code."""
    reply = replies.lhlo("mx.example", ["PIPELINING", "SIZE 10"])
    assert reply.to_bytes() == b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"


def test_multi_line_with_enhanced_code() -> None:
    """RFC 2034 section 3: each line of a multi-line reply has the enhanced code."""
    reply = Reply(451, "4.3.0", "one\ntwo")
    assert reply.to_bytes() == b"451-4.3.0 one\r\n451 4.3.0 two\r\n"


def test_for_recipient_names_it_once() -> None:
    """The recipient goes in angle brackets before the text, and only once."""
    reply = replies.DELIVERED.for_recipient("foo@abc.example")
    assert reply.to_bytes() == b"250 2.0.0 <foo@abc.example> Saved\r\n"
    assert reply.for_recipient("foo@abc.example") == reply


def test_utf8_recipient() -> None:
    """SMTPUTF8 addresses go out as UTF-8."""
    reply = replies.RCPT_OK.for_recipient("jörg@x")
    assert reply.to_bytes() == "250 2.1.5 <jörg@x> Recipient OK\r\n".encode()


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (199, "", "x"),
        (600, "", "x"),
        (250, "2.0", "x"),
        (550, "4.1.1", "x"),
        (250, "2.0.0", "a\rb"),
    ],
)
def test_malformed_replies_are_refused(code: int, enhanced: str, text: str) -> None:
    """Codes out of range, bad or mismatched enhanced codes and CR are errors."""
    with pytest.raises(ValueError):
        Reply(code, enhanced, text)


def test_table_carries_enhanced_codes() -> None:
    """Every fixed reply but the 354 go-ahead has an RFC 3463 enhanced code."""
    assert len(TABLE) > 40
    without = [reply for reply in TABLE if not reply.enhanced]
    assert without == [replies.START_INPUT]


def test_named_replies() -> None:
    """The replies other layers rely on have the codes the brief fixed."""
    assert (replies.MAILBOX_FULL.code, replies.MAILBOX_FULL.enhanced) == (452, "4.2.2")
    assert (replies.MAILBOX_FULL_PERM.code, replies.MAILBOX_FULL_PERM.enhanced) == (
        552,
        "5.2.2",
    )
    assert (replies.DOMAIN_NOT_HOSTED.code, replies.DOMAIN_NOT_HOSTED.enhanced) == (
        550,
        "5.1.2",
    )
    assert (replies.LOCAL_ERROR.code, replies.LOCAL_ERROR.enhanced) == (451, "4.3.0")
    assert (replies.TIMEOUT.code, replies.TIMEOUT.enhanced) == (421, "4.4.2")
    assert (replies.TOO_MANY_SESSIONS.code, replies.TOO_MANY_SESSIONS.enhanced) == (
        421,
        "4.3.2",
    )


@pytest.mark.parametrize(
    ("line", "verb", "arg"),
    [
        (b"mail FROM:<a@b>", "MAIL", "FROM:<a@b>"),
        (b"NOOP", "NOOP", ""),
        (b"RCPT TO:<a@b>  ", "RCPT", "TO:<a@b>"),
        (b"VRFY  x", "VRFY", "x"),
    ],
)
def test_parse_command(line: bytes, verb: str, arg: str) -> None:
    """Verbs come out upper-cased, arguments without surrounding blanks."""
    command = parse_command(line)
    assert (command.verb, command.arg) == (verb, arg)


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("FROM:<>", ""),
        ('FROM:<"a b"@x>', '"a b"@x'),
        ('FROM:<"a\\"> b"@x>', '"a\\"> b"@x'),
        ("FROM:<@relay:a@x>", "@relay:a@x"),
    ],
)
def test_parse_mail_address(arg: str, address: str) -> None:
    """The address is the raw text inside the brackets, quotes and all."""
    assert parse_mail(arg).address == address


def test_parse_params() -> None:
    """Keywords are upper-cased; a keyword alone has the value None."""
    assert parse_params(" size=10 SMTPUTF8 Body=8BITMIME") == {
        "SIZE": "10",
        "SMTPUTF8": None,
        "BODY": "8BITMIME",
    }


@pytest.mark.parametrize("text", ["=1", "SIZE=", "A=b=c", "-X=1"])
def test_bad_params(text: str) -> None:
    """Malformed parameters are syntax errors."""
    with pytest.raises(CommandError) as caught:
        parse_params(text)
    assert caught.value.reply == replies.SYNTAX_ERROR


def test_parse_bdat() -> None:
    """BDAT takes a size and an optional LAST."""
    assert parse_bdat("0 LAST") == (0, True)
    assert parse_bdat("123456789012") == (123456789012, False)


def test_xforward_updates_only_what_is_sent() -> None:
    """XFORWARD is incremental; [UNAVAILABLE] clears an attribute."""
    current = XForward(name="a.example", ident="ABC")
    updated = parse_xforward("ADDR=IPV6:2001+3Adb8::1 NAME=[UNAVAILABLE]", current)
    assert updated == XForward(name=None, addr="IPV6:2001:db8::1", ident="ABC")
