"""TLS for the POP3 proxy: a default certificate and one per domain, chosen by SNI.

Implicit TLS listeners (POP3S, RFC 8314 section 3.3) and STLS on plain
listeners (RFC 2595 section 4) start their handshake with one context; its
SNI callback (RFC 6066 section 3) moves the connection to the certificate of
the domain whose server name the client asked for, or to the default one.
The callback reads the contexts of the current configuration, so a reload
changes certificates for listeners that are already open.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from dataclasses import dataclass

from mdcore.config import ServerConfig
from mdcore.errors import ConfigError, InvalidNameError
from mdcore.names import normalize_domain

log = logging.getLogger(__name__)

TLSObject = ssl.SSLObject | ssl.SSLSocket


@dataclass(frozen=True)
class _Contexts:
    """The loaded certificates of one configuration."""

    default: ssl.SSLContext | None
    by_name: dict[str, ssl.SSLContext]


class TlsContexts:
    """The server side of TLS: the handshake context and the SNI choice."""

    def __init__(self, config: ServerConfig) -> None:
        """Load every certificate the config names; ConfigError if one fails."""
        self._current = _load(config)
        self._names: weakref.WeakKeyDictionary[TLSObject, str] = (
            weakref.WeakKeyDictionary()
        )
        self.context = self._handshake_context()

    @property
    def available(self) -> bool:
        """Whether any certificate is configured (STLS offered, POP3S possible)."""
        return self.context is not None

    def server_name(self, tls: TLSObject | None) -> str:
        """The name the client asked for in SNI, "" if none (or no TLS)."""
        return "" if tls is None else self._names.get(tls, "")

    def reload(self, config: ServerConfig) -> None:
        """Take the certificates of a new configuration; ConfigError if one fails.

        Listeners keep the context they were opened with, whose callback
        then picks from the new certificates.
        """
        self._current = _load(config)
        if self.context is None:
            self.context = self._handshake_context()

    def _handshake_context(self) -> ssl.SSLContext | None:
        current = self._current
        context = current.default or next(iter(current.by_name.values()), None)
        if context is not None:
            context.sni_callback = self._choose
        return context

    def _choose(
        self, tls: TLSObject, server_name: str | None, _context: ssl.SSLContext
    ) -> int | None:
        name = _normal(server_name or "")
        if name:
            self._names[tls] = name
        chosen = self._current.by_name.get(name) or self._current.default
        if chosen is not None:
            tls.context = chosen
        return None


def _load(config: ServerConfig) -> _Contexts:
    pop3 = config.pop3
    default = None
    if pop3.certificate:
        default = _certificate(
            config.source, "pop3", pop3.certificate, pop3.private_key
        )
    by_name: dict[str, ssl.SSLContext] = {}
    for index, binding in enumerate(config.domains):
        if not binding.certificate:
            continue
        key = f"domains[{index}]"
        context = _certificate(
            config.source, key, binding.certificate, binding.private_key
        )
        for name in binding.server_names:
            by_name[name] = context
    return _Contexts(default, by_name)


def _certificate(
    source: str, key: str, certificate: str, private_key: str
) -> ssl.SSLContext:
    """A server context with one certificate chain; ConfigError naming the key."""
    context = _server_context()
    try:
        context.load_cert_chain(certificate, private_key or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(source, f"{key}.certificate", str(error)) from None
    return context


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # RFC 8996: TLS 1.0 and 1.1 are deprecated.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _normal(name: str) -> str:
    try:
        return normalize_domain(name)
    except InvalidNameError:
        return ""
