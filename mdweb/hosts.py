"""Which hosted domain a request is for, from the host name the browser asked for.

Like web virtual hosts: one server answers for many domains, and the Host name
picks one. A domain answers under its own name, under ``mail.`` and ``webmail.``
in front of it, and under the server names its binding in the config lists.
"""

from typing import Protocol

from mdcore.config import DomainBinding
from mdcore.errors import InvalidNameError
from mdcore.names import normalize_domain

# Host names that stand for the domain after them.
PREFIXES = ("mail.", "webmail.")


class HostedDomains(Protocol):
    """What the map needs to know of the hosted domains (a Registry has it)."""

    def canonical(self, domain: str) -> str | None:
        """The hosted domain behind a name (alias domains followed), or None."""


def strip_port(host: str) -> str:
    """The name part of a Host header value: "[::1]:8080" -> "::1", "a:80" -> "a"."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


class HostMap:
    """Maps Host header values to hosted domains; None for anything else."""

    def __init__(
        self, hosted: HostedDomains, bindings: tuple[DomainBinding, ...]
    ) -> None:
        """Remember the hosted domains and each binding's server names."""
        self.hosted = hosted
        self.by_name = {
            name: binding.domain
            for binding in bindings
            for name in binding.server_names
        }

    def domain(self, host: str) -> str | None:
        """The hosted domain this Host value names, or None."""
        try:
            name = normalize_domain(strip_port(host.strip()))
        except InvalidNameError:
            return None

        # A name the config gives to a domain wins over the name's own shape.
        if name in self.by_name:
            return self.hosted.canonical(self.by_name[name])
        found = self.hosted.canonical(name)
        if found is not None:
            return found
        for prefix in PREFIXES:
            if name.startswith(prefix):
                found = self.hosted.canonical(name.removeprefix(prefix))
                if found is not None:
                    return found
        return None
