"""Aliases of one domain: a local part, or the catch-all, to one or more targets.

The file holds one alias a line, ``name: target, target``. A target without "@" is an
account or alias of the same domain; one with "@" is an address in another hosted
domain or outside. The name ``@`` is the catch-all of the domain.
"""

import logging

from mdcore.errors import AdminError, InvalidNameError
from mdcore.names import check_local_part, parse_address

log = logging.getLogger(__name__)

CATCH_ALL = "@"

Aliases = dict[str, tuple[str, ...]]


def parse_aliases(text: str) -> Aliases:
    """Parse an aliases file; malformed lines are logged and skipped."""
    aliases: Aliases = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        targets = tuple(target.strip() for target in rest.split(",") if target.strip())
        if not colon or not name.strip() or not targets:
            log.warning("aliases line %d is malformed and was skipped", number)
            continue
        aliases[name.strip()] = targets
    return aliases


def format_aliases(aliases: Aliases) -> str:
    """Return the text of an aliases file, sorted with the catch-all last."""
    names = sorted(aliases, key=lambda name: (name == CATCH_ALL, name))
    return "".join(f"{name}: {', '.join(aliases[name])}\n" for name in names)


def check_alias_name(name: str) -> str:
    """Validate the name side of an alias (a local part or the catch-all)."""
    return name if name == CATCH_ALL else check_local_part(name)


def check_target(target: str) -> str:
    """Validate one alias target: a local part, or a full address."""
    try:
        if "@" in target:
            return str(parse_address(target))
        return check_local_part(target)
    except InvalidNameError as error:
        raise AdminError(f"alias target {target!r}: {error}") from None


def parse_domain_aliases(text: str) -> dict[str, str]:
    """Parse the server-wide table of alias domains: ``alias target`` a line."""
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2:
            log.warning("domain-aliases line %d is malformed and was skipped", number)
            continue
        table[words[0]] = words[1]
    return table


def format_domain_aliases(table: dict[str, str]) -> str:
    """Return the text of the alias-domain table."""
    return "".join(f"{alias} {target}\n" for alias, target in sorted(table.items()))
