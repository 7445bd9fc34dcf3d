"""Prometheus metrics of every server, labelled by domain and outcome only.

Each server owns one `Metrics` with its own collector registry; the components
call its small methods where they write their one-line events. A `domain` label
is only ever a domain the `known` check accepts (hosted, or configured) or "-":
a name a client made up must never become a series, or anyone could grow the
exporter's memory and the scraper's database at will.
"""

import enum
import os
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from mdcore.errors import MdmailError
from mdcore.names import normalize_domain
from mdcore.namespace import Registry

# The label of everything that is not one of our domains.
OTHER_DOMAIN = "-"

# From a small message on a fast disk to a large one sent over a slow link.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Family = TypeVar("Family", Counter, Histogram)


class RecipientOutcome(enum.Enum):
    """What one LMTP recipient was told, by the class of its reply."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    REJECTED = "rejected"

    @classmethod
    def of(cls, code: int) -> "RecipientOutcome":
        """2xx delivered, 4xx deferred, 5xx rejected."""
        if code < 400:
            return cls.DELIVERED
        return cls.DEFERRED if code < 500 else cls.REJECTED


class LoginOutcome(enum.Enum):
    """How a POP3 or web login ended."""

    OK = "ok"
    FAILED = "failed"
    DISABLED = "disabled"
    IN_USE = "in-use"
    UNAVAILABLE = "unavailable"
    FORWARDED = "forwarded"
    PENDING = "pending"


class MilterOutcome(enum.Enum):
    """What the milter told the MTA for one step."""

    ACCEPTED = "accepted"
    PASSED = "passed"
    REJECTED = "rejected"
    DEFERRED = "deferred"


class _Children(Generic[Family]):
    """A labelled family whose children are kept, so counting formats no labels."""

    def __init__(self, family: Family) -> None:
        self.family: Family = family
        self._children: dict[tuple[str, ...], Family] = {}

    def get(self, *values: str) -> Family:
        """The child for these label values (made once, then looked up)."""
        child = self._children.get(values)
        if child is None:
            # Two threads may both make it: labels() hands both the same child.
            child = self._children[values] = self.family.labels(*values)
        return child


def count_in_files(directory: str) -> None:
    """In a worker process: keep the counts made from now on in directory's files.

    Called before the worker makes its Metrics, so each value is a memory-mapped
    file of this process (the client library's multiprocess mode), which the
    parent sums for its exporter with `summed_registry`.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def summed_registry(directory: str) -> CollectorRegistry:
    """In the parent: a registry that sums the counts of every worker in directory."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def hosted_in(registry: Registry) -> Callable[[str], bool]:
    """A `known` check: the domain (its normal form) is hosted under the registry."""

    def known(domain: str) -> bool:
        # Only the normal form: "ABC.example" names abc.example's tree too, and
        # every way of writing a name in capitals would otherwise be a series.
        try:
            return normalize_domain(domain) == domain == registry.canonical(domain)
        except MdmailError:
            return False

    return known


class Metrics:
    """The metric families of one server process and the calls that count."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        """Make the families in a registry of our own; `known` vets domain labels."""
        # The library's *_created series would double every scrape, and nothing
        # reads them: Prometheus sees a counter's restart from its value.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._known = known
        # Domains once found known: the set is bounded by the hosted domains.
        self._domains: set[str] = set()
        ProcessCollector(registry=self.registry)
        self._make_lmtp()
        self._make_pop3()
        self._make_others()

    def _make_lmtp(self) -> None:
        self._recipients = _Children(
            self._counter(
                "mdmail_lmtp_recipients_total",
                "LMTP recipients by the outcome of their reply (RCPT or after DATA)",
            )
        )
        self._delivered_bytes = _Children(
            self._counter(
                "mdmail_lmtp_delivered_bytes_total",
                "Message octets delivered, counted once per delivered recipient",
                ("domain",),
            )
        )
        # Not by domain: the latency is the disk's and the client's, and a
        # series set per domain would multiply every bucket by the domains.
        self._latency = _Children(
            Histogram(
                "mdmail_lmtp_delivery_seconds",
                "Seconds from MAIL FROM to the reply after DATA, per recipient",
                ("outcome",),
                registry=self.registry,
                buckets=DELIVERY_BUCKETS,
            )
        )

    def _make_pop3(self) -> None:
        self._logins = _Children(
            self._counter("mdmail_pop3_logins_total", "POP3 login attempts")
        )
        self._retrieved = _Children(
            self._counter(
                "mdmail_pop3_retrieved_messages_total",
                "Messages sent whole by RETR, counted at logout",
                ("domain",),
            )
        )
        self._retrieved_bytes = _Children(
            self._counter(
                "mdmail_pop3_retrieved_bytes_total",
                "Message octets sent by RETR, counted at logout",
                ("domain",),
            )
        )
        self._deleted = _Children(
            self._counter(
                "mdmail_pop3_deleted_messages_total",
                "Messages removed in the UPDATE state (RFC 1939 section 6)",
                ("domain",),
            )
        )

    def _make_others(self) -> None:
        self._milter = _Children(
            self._counter(
                "mdmail_milter_decisions_total",
                "Milter decisions logged at MAIL (refusals), RCPT and end of message",
            )
        )
        self._web_logins = _Children(
            self._counter("mdmail_web_logins_total", "Self-service web page logins")
        )

    def _counter(
        self, name: str, help_text: str, labels: tuple[str, ...] = ("domain", "outcome")
    ) -> Counter:
        return Counter(name, help_text, labels, registry=self.registry)

    def domain_label(self, domain: str) -> str:
        """The domain itself if it is known, else "-"."""
        if domain in self._domains:
            return domain
        if domain and domain != OTHER_DOMAIN and self._known(domain):
            self._domains.add(domain)
            return domain
        return OTHER_DOMAIN

    # LMTP

    def delivery(
        self, domain: str, outcome: RecipientOutcome, size: int, seconds: float
    ) -> None:
        """One recipient answered after DATA: count it, its octets and latency."""
        label = self.domain_label(domain)
        self._recipients.get(label, outcome.value).inc()
        if outcome is RecipientOutcome.DELIVERED:
            self._delivered_bytes.get(label).inc(size)
        self._latency.get(outcome.value).observe(seconds)

    def refusal(self, domain: str, outcome: RecipientOutcome) -> None:
        """One recipient refused at RCPT."""
        self._recipients.get(self.domain_label(domain), outcome.value).inc()

    # POP3

    def login(self, domain: str, outcome: LoginOutcome) -> None:
        """One POP3 login attempt."""
        self._logins.get(self.domain_label(domain), outcome.value).inc()

    def logout(self, domain: str, retrieved: int, octets: int, deleted: int) -> None:
        """What a POP3 session did, counted when it ends."""
        label = self.domain_label(domain)
        self._retrieved.get(label).inc(retrieved)
        self._retrieved_bytes.get(label).inc(octets)
        self._deleted.get(label).inc(deleted)

    # Milter and web page

    def milter_decision(self, domain: str, outcome: MilterOutcome) -> None:
        """One decision the milter logged."""
        self._milter.get(self.domain_label(domain), outcome.value).inc()

    def web_login(self, domain: str, outcome: LoginOutcome) -> None:
        """One login attempt on the self-service page."""
        self._web_logins.get(self.domain_label(domain), outcome.value).inc()
