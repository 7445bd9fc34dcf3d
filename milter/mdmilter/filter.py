"""The pymilter callbacks: read the MTA's macros, ask the policy, answer the MTA.

One `DomainFilter` lives for one SMTP connection (libmilter runs each connection in
its own thread). It holds no rule of its own: every decision comes from the policy,
and this class maps it to a milter return code and an SMTP reply. No exception
leaves a callback: a fault answers 451 4.3.0, so the MTA keeps the message.

Every step costs the MTA and the milter a round trip, so the negotiation asks for
the few steps the policy needs, leaves those whose answer is always "continue"
unanswered where that does not stall the MTA, and asks for the few macros read.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from mdcore.logs import for_domain
from mdcore.metrics import Metrics, MilterOutcome, hosted_in
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

# Header field names are case-insensitive (RFC 5322 section 1.2.2).
DOMAIN_HEADER_NAME = DOMAIN_HEADER.lower()

# libmilter's return codes per verdict; ACCEPT is CONTINUE, not Milter.ACCEPT, which
# would accept the whole message and skip the end-of-message step.
_RETURN_CODES = {
    Verdict.ACCEPT: Milter.CONTINUE,
    Verdict.PASS: Milter.CONTINUE,
    Verdict.REJECT: Milter.REJECT,
    Verdict.TEMPFAIL: Milter.TEMPFAIL,
}

# The metrics' name of each verdict.
_OUTCOMES = {
    Verdict.ACCEPT: MilterOutcome.ACCEPTED,
    Verdict.PASS: MilterOutcome.PASSED,
    Verdict.REJECT: MilterOutcome.REJECTED,
    Verdict.TEMPFAIL: MilterOutcome.DEFERRED,
}

# Postfix creates the queue file only after the first accepted recipient.
NO_QUEUE_ID = "NOQUEUE"

# Steps the MTA need not send at all (SMFIP_NO*): HELO, unknown commands and the
# end of the header carry nothing the policy uses. DATA carries nothing either, but
# stays, answered: see data().
SKIPPED_STEPS = Milter.P_NOHELO | Milter.P_NOUNKNOWN | Milter.P_NOEOH
# Steps the MTA need not wait for (SMFIP_NR_*, milter protocol 6): header fields
# and body chunks are only counted, so their answer is always "continue", and the
# MTA can send the whole message in one go.
UNANSWERED_STEPS = Milter.P_NR_HDR | Milter.P_NR_BODY

# The macros read at each step, asked for at negotiation (SMFIF_SETSYMLIST) so the
# MTA looks up and sends no others: the server address ({if_addr} is sendmail's)
# and the listener's name at connect, the queue id for the log lines.
MACROS = (
    (Milter.M_CONNECT, "{daemon_addr} {if_addr} {daemon_name}"),
    (Milter.M_ENVFROM, "{i}"),
    (Milter.M_ENVRCPT, "{i}"),
    (Milter.M_EOM, "{i}"),
)

# The empty line that ends the header (RFC 5322 section 2.1), counted in the size.
HEADER_END = len(b"\r\n")

Callback = TypeVar("Callback", bound=Callable[..., int])
# A step that only counts what it is given, and so has nothing to answer.
CountingStep = Callable[..., None]


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


def unanswered(step: int) -> Callable[[CountingStep], Callable[..., int]]:
    """For a step negotiated without a reply: answer NOREPLY, keep any fault.

    The MTA waits for no answer there, so a fault is logged and answered at the
    end of the message instead (451 4.3.0, as anywhere else).
    """

    def decorate(callback: CountingStep) -> Callable[..., int]:
        @functools.wraps(callback)
        def wrapper(self: "DomainFilter", *args: Any) -> int:
            try:
                callback(self, *args)
            except Exception:
                log.exception(
                    "%s: milter fault in %s", self.queue_id(), callback.__name__
                )
                self.faulted = True
            return self.continued(step)

        return wrapper

    return decorate


class DomainFilter(Milter.Base):  # type: ignore[misc]
    """One SMTP connection seen through the milter protocol."""

    def __init__(self, policy: Policy, metrics: Metrics) -> None:
        self.policy = policy
        self.metrics = metrics
        self.connection = UNKNOWN_CONNECTION
        self.envelope = Envelope()
        self.forged_headers = 0
        self.size = HEADER_END
        self.faulted = False

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

    def continued(self, step: int) -> int:
        """CONTINUE, or NOREPLY where the MTA agreed to wait for no answer."""
        return int(Milter.NOREPLY if self._protocol & step else Milter.CONTINUE)

    # Callbacks, in protocol order.

    @guarded
    def negotiate(self, opts: list[int]) -> int:
        """Agree on the steps and macros: what the MTA offers that the policy uses."""
        # opts holds the MTA's offer (actions, steps, two reserved words) and is
        # answered in place; a step or flag it does not offer is never asked for.
        self._actions, offered = opts[0], opts[1]
        opts[1] = self._protocol = offered & (SKIPPED_STEPS | UNANSWERED_STEPS)
        opts[2] = opts[3] = 0
        if self._actions & Milter.SETSYMLIST:
            # Straight to the context: pymilter 1.0.5's Base.setsymlist hands it
            # bytes, which its own C module refuses (it takes str).
            for stage, names in MACROS:
                self._ctx.setsymlist(stage, names)
        return int(Milter.CONTINUE)

    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        """Tie the connection to a domain by the server address the client used."""
        server_address = self._macro("{daemon_addr}") or self._macro("{if_addr}")
        listener_name = self._macro("{daemon_name}")
        self.connection = self.policy.check_connect(server_address, listener_name)
        log.debug(
            "milter: connect from %s %s to %s: domain=%s",
            hostname,
            hostaddr,
            server_address or "-",
            self.connection.domain or "-",
        )
        return int(Milter.CONTINUE)

    @guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        """Start a transaction and check the sender against the connection's domain."""
        self.envelope = Envelope(unbracket(mail_from), declared_size(params))
        self.forged_headers = 0
        self.size = HEADER_END
        self.faulted = False
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
        # An accepted recipient is an event of the message, logged with its queue
        # id (which Postfix has not given yet at the first RCPT) at the end.
        level = logging.DEBUG if decision.verdict is Verdict.ACCEPT else logging.INFO
        self._log(decision, f"to=<{shown}>", level=level)
        return self._answer(decision)

    @guarded
    def data(self) -> int:
        """The DATA command: nothing to decide, but an answer the MTA waits for."""
        # Without this step Postfix's smtpd sends the DATA macros on their own,
        # and its cleanup then sends the header on the same TCP connection; that
        # small second packet waits (Nagle's algorithm, RFC 896) until the first
        # is acknowledged, which our side delays as it has nothing to send (RFC
        # 1122 section 4.2.3.2): 40 ms on Linux, for every message. The answer
        # carries the acknowledgement with it.
        return int(Milter.CONTINUE)

    @unanswered(Milter.P_NR_HDR)
    def header_bytes(self, name: str, value: bytes) -> None:
        """Count the message size, and our header where a sender forged it."""
        # The raw octets, as sent: nothing here needs the value as text.
        if name.lower() == DOMAIN_HEADER_NAME:
            self.forged_headers += 1
        self.size += len(name) + len(value) + 4  # ": " and CRLF

    @unanswered(Milter.P_NR_BODY)
    def body(self, chunk: bytes) -> None:
        """Count the body's size; the content itself is not looked at."""
        self.size += len(chunk)

    @guarded
    def eom(self) -> int:
        """Check the real size; for mail to our domains, mark it and qualify."""
        if self.faulted:
            return self.fault()
        decision = self.policy.check_eom(self.size, self.connection, self.envelope)
        note = ""
        # Mail that reaches none of our domains (relayed elsewhere) is left as it is.
        if decision.allows and self.envelope.recipients:
            note = self._mark_message()
        recipients = len(self.envelope.recipients)
        self._log(decision, f"size={self.size}, nrcpt={recipients}", note)
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

    def _log(
        self, decision: Decision, what: str, note: str = "", level: int = logging.INFO
    ) -> None:
        domain = decision.domain or self.connection.domain or ""
        detail = str(decision.reply) if decision.reply else note
        self.metrics.milter_decision(domain, _OUTCOMES[decision.verdict])
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "%s: milter %s, domain=%s, rule=%s, status=%s%s",
            self.queue_id(),
            what,
            domain or "-",
            decision.check.value,
            decision.verdict.value,
            f" ({detail})" if detail else "",
            extra=for_domain(domain) if domain else None,
        )


def factory(
    policy: Policy, metrics: Metrics | None = None
) -> Callable[[], DomainFilter]:
    """What Milter.factory needs: a callable making one filter per connection.

    Every connection counts into the same metrics (their counters take locks:
    libmilter calls each connection from its own thread).
    """
    counted = metrics or Metrics(hosted_in(policy.registry))
    return functools.partial(DomainFilter, policy, counted)
