"""The pymilter callbacks: read the MTA's macros, ask the policy, answer the MTA.

One `DomainFilter` lives for one SMTP connection (libmilter runs each connection in
its own thread). It holds no rule of its own: every decision comes from the policy,
and this class maps it to a milter return code and an SMTP reply. No exception
leaves a callback: a fault answers 451 4.3.0, so the MTA keeps the message.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from mdcore.logs import for_domain
from mdmilter.policy import (
    DOMAIN_HEADER,
    LOCAL_ERROR,
    UNKNOWN_CONNECTION,
    Decision,
    Envelope,
    Policy,
    Reply,
    Verdict,
    declared_size,
    unbracket,
)

log = logging.getLogger(__name__)

# libmilter's return codes per verdict; ACCEPT is CONTINUE, not Milter.ACCEPT, which
# would accept the whole message and skip the end-of-message step.
_RETURN_CODES = {
    Verdict.ACCEPT: Milter.CONTINUE,
    Verdict.PASS: Milter.CONTINUE,
    Verdict.REJECT: Milter.REJECT,
    Verdict.TEMPFAIL: Milter.TEMPFAIL,
}

# Postfix creates the queue file only after the first accepted recipient.
NO_QUEUE_ID = "NOQUEUE"

Callback = TypeVar("Callback", bound=Callable[..., int])


def guarded(callback: Callback) -> Callback:
    """Turn any exception of a callback into a logged 451 4.3.0 (TEMPFAIL)."""

    @functools.wraps(callback)
    def wrapper(self: "DomainFilter", *args: Any) -> int:
        try:
            return callback(self, *args)
        except Exception:
            log.exception("%s: milter fault in %s", self.queue_id(), callback.__name__)
            return self.fault()

    return wrapper  # type: ignore[return-value]


class DomainFilter(Milter.Base):  # type: ignore[misc]
    """One SMTP connection seen through the milter protocol."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.connection = UNKNOWN_CONNECTION
        self.envelope = Envelope()
        self.forged_headers = 0
        self.size = 0

    def queue_id(self) -> str:
        """The MTA's queue id ({i}), or NOQUEUE before there is one."""
        try:
            value = self.getsymval("{i}")
        except Exception:
            return NO_QUEUE_ID
        return str(value) if value else NO_QUEUE_ID

    def fault(self) -> int:
        """Answer a temporary failure for our own fault; never raise."""
        try:
            self._set_reply(LOCAL_ERROR)
        except Exception:
            log.exception("milter: cannot set the reply of a fault")
        return int(Milter.TEMPFAIL)

    # Callbacks, in protocol order. Each one pymilter sees defined is negotiated
    # with the MTA; one left undefined is skipped by the MTA (and by miltertest).

    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        """Tie the connection to a domain by the server address the client used."""
        server_address = self._macro("{daemon_addr}") or self._macro("{if_addr}")
        listener_name = self._macro("{daemon_name}")
        self.connection = self.policy.check_connect(server_address, listener_name)
        log.debug(
            "milter: connect from %s %s to %s: %s",
            hostname,
            hostaddr,
            server_address or "-",
            self.connection.header_value(),
        )
        return int(Milter.CONTINUE)

    @guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        """Start a transaction and check the sender against the connection's domain."""
        self.envelope = Envelope(unbracket(mail_from), declared_size(params))
        self.forged_headers = 0
        self.size = 0
        decision = self.policy.check_mail(
            self.envelope.mail_from, self.envelope.declared_size, self.connection
        )
        if not decision.allows:
            self._log(decision, f"from=<{self.envelope.mail_from}>")
        return self._answer(decision)

    @guarded
    def envrcpt(self, rcpt: str, *params: str) -> int:
        """Decide one recipient; remember the accepted ones."""
        decision = self.policy.check_rcpt(rcpt, self.connection, self.envelope)
        if decision.allows and decision.recipient is not None:
            self.envelope = self.envelope.adding(decision.recipient)
            shown = decision.recipient.address
        else:
            shown = unbracket(rcpt)
        self._log(decision, f"to=<{shown}>")
        return self._answer(decision)

    @guarded
    def header(self, name: str, value: str | bytes) -> int:
        """Count the message size, and our header where a sender forged it."""
        if name.lower() == DOMAIN_HEADER.lower():
            self.forged_headers += 1
        octets = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
        self.size += len(name) + len(octets) + 4  # ": " and CRLF
        return int(Milter.CONTINUE)

    @guarded
    def eoh(self) -> int:
        """The empty line after the header."""
        self.size += 2
        return int(Milter.CONTINUE)

    @guarded
    def body(self, chunk: bytes) -> int:
        """Count the body's size; the content itself is not looked at."""
        self.size += len(chunk)
        return int(Milter.CONTINUE)

    @guarded
    def eom(self) -> int:
        """Check the real size; for mail to our domains, mark it and qualify."""
        decision = self.policy.check_eom(self.size, self.connection, self.envelope)
        note = ""
        # Mail that reaches none of our domains (relayed elsewhere) is left as it is.
        if decision.allows and self.envelope.recipients:
            note = self._mark_message()
        self._log(decision, f"size={self.size}", note)
        return self._answer(decision)

    def _mark_message(self) -> str:
        """Put our domain header in place of forged ones; rewrite bare recipients."""
        # Remove forged copies from the last to the first, so that the indexes
        # (1-based, counted per header name) of the others stay valid.
        for index in range(self.forged_headers, 0, -1):
            self.chgheader(DOMAIN_HEADER, index, "")
        for given, address in self.envelope.rewrites():
            self.delrcpt(given)
            self.addrcpt(f"<{address}>")
        value = self.connection.header_value()
        self.addheader(DOMAIN_HEADER, value)
        return f"{DOMAIN_HEADER}: {value}"

    @guarded
    def abort(self) -> int:
        """The client reset or left mid-transaction: forget the transaction."""
        self.envelope = Envelope()
        return int(Milter.CONTINUE)

    @guarded
    def close(self) -> int:
        """The connection ended."""
        return int(Milter.CONTINUE)

    # Helpers

    def _macro(self, name: str) -> str:
        value = self.getsymval(name)
        return str(value) if value else ""

    def _answer(self, decision: Decision) -> int:
        if decision.reply is not None and not decision.allows:
            self._set_reply(decision.reply)
        return int(_RETURN_CODES[decision.verdict])

    def _set_reply(self, reply: Reply) -> None:
        self.setreply(str(reply.code), reply.enhanced, reply.text)

    def _log(self, decision: Decision, what: str, note: str = "") -> None:
        domain = decision.domain or self.connection.domain or ""
        detail = str(decision.reply) if decision.reply else note
        log.info(
            "%s: milter %s, domain=%s, rule=%s, status=%s%s",
            self.queue_id(),
            what,
            domain or "-",
            decision.check.value,
            decision.verdict.value,
            f" ({detail})" if detail else "",
            extra=for_domain(domain) if domain else None,
        )


def factory(policy: Policy) -> Callable[[], DomainFilter]:
    """What Milter.factory needs: a callable making one filter per connection."""
    return functools.partial(DomainFilter, policy)
