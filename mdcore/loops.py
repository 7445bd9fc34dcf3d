"""Detection of alias loops across hosted domains, before a change is written."""

from pathlib import Path

from mdcore.accounts import account_names
from mdcore.aliases import CATCH_ALL, Aliases, parse_aliases, parse_domain_aliases
from mdcore.errors import InvalidNameError
from mdcore.layout import StateRoot
from mdcore.names import parse_address
from mdcore.settings import load_settings

Node = tuple[str, str]  # (domain, alias name)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


class _Graph:
    """Alias edges of the hosted domains, with one domain's aliases replaced."""

    def __init__(self, root: StateRoot, domain: str, changed: Aliases) -> None:
        self.root = root
        self.domain_aliases = parse_domain_aliases(_read(root.domain_aliases))
        self.aliases: dict[str, Aliases] = {domain: changed}

    def targets(self, node: Node) -> list[Node]:
        domain, name = node
        aliases = self._aliases(domain)
        return [
            edge
            for target in aliases.get(name, ())
            if (edge := self._node(domain, target))
        ]

    def _aliases(self, domain: str) -> Aliases:
        if domain not in self.aliases:
            self.aliases[domain] = parse_aliases(_read(self.root.tree(domain).aliases))
        return self.aliases[domain]

    def _node(self, domain: str, target: str) -> Node | None:
        try:
            address = parse_address(target if "@" in target else f"{target}@{domain}")
        except InvalidNameError:
            return None
        hosted = self.domain_aliases.get(address.domain, address.domain)
        tree = self.root.tree(hosted)
        if not tree.path.is_dir():
            return None
        settings = load_settings(tree.settings)
        local = (
            address.local
            if settings.case_sensitive_local_parts
            else address.local.lower()
        )
        aliases = self._aliases(hosted)
        if local in aliases or CATCH_ALL not in aliases:
            return (hosted, local)
        if local in account_names(_read(tree.passwd)):
            return (hosted, local)
        return (hosted, CATCH_ALL)


def find_alias_loop(root: StateRoot, domain: str, changed: Aliases) -> list[str] | None:
    """Return the addresses of a loop the changed aliases would make, or None."""
    graph = _Graph(root, domain, changed)
    for name in changed:
        loop = _walk(graph, (domain, name), [])
        if loop:
            return [f"{local}@{host}" for host, local in loop]
    return None


def _walk(graph: _Graph, node: Node, path: list[Node]) -> list[Node] | None:
    if node in path:
        return [*path[path.index(node) :], node]
    for edge in graph.targets(node):
        loop = _walk(graph, edge, [*path, node])
        if loop:
            return loop
    return None
