"""Records of one LMTP connection (Session) and one mail transaction (Envelope)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType


class BodyType(Enum):
    """The BODY= value of MAIL (RFC 6152 section 2, RFC 3030 section 3)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


@dataclass(frozen=True)
class XForward:
    """Client attributes an MTA forwarded with XFORWARD (Postfix XFORWARD_README).

    None means never sent or sent as "[UNAVAILABLE]". `ident` is the queue id
    of the message on the MTA: log it with every line about the message.
    """

    name: str | None = None
    addr: str | None = None
    port: str | None = None
    proto: str | None = None
    helo: str | None = None
    ident: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Session:
    """One LMTP connection: what the client told us about itself."""

    lhlo_name: str | None = None
    xforward: XForward = XForward()


def _no_params() -> Mapping[str, str | None]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Envelope:
    """One mail transaction: sender, its MAIL parameters and accepted recipients.

    `mail_from` is "" for the null sender <>. Addresses are the raw text the
    client put between the angle brackets; splitting them into local part and
    domain, and unquoting, is for the application. `rcpt_tos` holds only the
    recipients the application accepted, in RCPT order.
    """

    mail_from: str
    mail_params: Mapping[str, str | None] = field(default_factory=_no_params)
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    declared_size: int | None = None
    rcpt_tos: tuple[str, ...] = ()

    def with_recipient(self, address: str) -> Envelope:
        """This envelope with one more accepted recipient."""
        # Field by field: dataclasses.replace() inspects the class each time,
        # and this runs for every RCPT.
        return Envelope(
            self.mail_from,
            self.mail_params,
            self.body_type,
            self.smtputf8,
            self.declared_size,
            (*self.rcpt_tos, address),
        )
