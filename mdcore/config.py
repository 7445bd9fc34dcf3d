"""The server's YAML configuration: state root, listeners, limits, domain addresses.

Loaded once at start (and again on SIGHUP) and validated whole: an unknown key, a
wrong type or a bad value stops the program with one line naming the file and key.
"""

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from mdcore import schema
from mdcore.errors import ConfigError
from mdcore.layout import StateRoot
from mdcore.names import normalize_domain

ENV_CONFIG = "MDMAIL_CONFIG"
DEFAULT_CONFIG = Path("/etc/mdmail/mdmail.yaml")


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _listen(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        kind, _, rest = value.partition(":")
        if kind == "unix" and rest.startswith("/"):
            continue
        if kind == "inet" and _host_port(rest):
            continue
        raise ValueError(f"{value!r} is not unix:/path or inet:ADDRESS:PORT")
    return values


def _host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    return True


def _metrics_listen(value: str) -> str:
    # Empty turns the exporter off.
    if value and not _host_port(value):
        raise ValueError(f"{value!r} is not ADDRESS:PORT")
    return value


def _mode(value: str) -> str:
    try:
        number = int(value, 8)
    except ValueError:
        raise ValueError("must be an octal mode such as '0660'") from None
    if not 0 <= number <= 0o777:
        raise ValueError("must be an octal mode such as '0660'")
    return value


def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_address(value)) for value in values)


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_network(value, strict=False)) for value in values)


def _server_names(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(normalize_domain(value) for value in values)


def _level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be debug, info, warning or error")
    return value.upper()


def _fsync_way(value: str) -> str:
    if value not in ("auto", "threads"):
        raise ValueError("must be auto or threads")
    return value


@dataclass(frozen=True)
class LmtpConfig:
    """The LMTP server's listeners and limits."""

    listen: tuple[str, ...] = schema.checked(_listen, default=("inet:127.0.0.1:24",))
    socket_mode: str = schema.checked(_mode, default="0660")
    socket_owner: str = ""
    socket_group: str = ""
    max_message_size: int = schema.checked(_positive, default=50 * 1024 * 1024)
    max_line_length: int = schema.checked(_not_negative, default=1000)
    max_recipients: int = schema.checked(_positive, default=1000)
    max_sessions: int = schema.checked(_positive, default=100)
    idle_timeout: int = schema.checked(_positive, default=300)
    tmp_max_age: int = schema.checked(_positive, default=36 * 3600)
    # Server processes on the same listeners; 0 (the default) is one per CPU.
    workers: int = schema.checked(_not_negative, default=0)
    # auto: fsync by Linux native AIO where the kernel has it, else threads.
    fsync: str = schema.checked(_fsync_way, default="auto")
    metrics_listen: str = schema.checked(_metrics_listen, default="")


@dataclass(frozen=True)
class Pop3Config:
    """The POP3 proxy's listeners and limits."""

    listen: tuple[str, ...] = schema.checked(_listen, default=("inet:127.0.0.1:110",))
    tls_listen: tuple[str, ...] = schema.checked(_listen, default=())
    trusted_networks: tuple[str, ...] = schema.checked(
        _networks, default=("127.0.0.0/8", "::1/128")
    )
    max_sessions_per_client: int = schema.checked(_positive, default=10)
    max_sessions: int = schema.checked(_positive, default=1000)
    idle_timeout: int = schema.checked(_positive, default=600)
    certificate: str = ""
    private_key: str = ""
    login_delay_base: float = 0.5
    login_delay_max: float = 16.0
    forward_timeout: int = schema.checked(_positive, default=30)
    metrics_listen: str = schema.checked(_metrics_listen, default="")


@dataclass(frozen=True)
class MilterConfig:
    """The milter's socket, its timeout and its metrics endpoint."""

    socket: str = "inet:8891@127.0.0.1"
    timeout: int = schema.checked(_positive, default=10)
    metrics_listen: str = schema.checked(_metrics_listen, default="")


def _web_listen(value: str) -> str:
    if not _host_port(value):
        raise ValueError(f"{value!r} is not ADDRESS:PORT")
    return value


@dataclass(frozen=True)
class WebConfig:
    """The self-service web page: where it listens and whom it trusts."""

    listen: str = schema.checked(_web_listen, default="127.0.0.1:8080")
    # Empty: a fresh key at every start (everyone is logged out by a restart).
    secret_key_file: str = ""
    # Forwarded headers are believed only from these peers (the reverse proxy).
    trusted_proxies: tuple[str, ...] = schema.checked(_networks, default=())
    login_delay_base: float = 0.5
    login_delay_max: float = 16.0
    session_max_age: int = schema.checked(_positive, default=8 * 3600)
    log_lines: int = schema.checked(_positive, default=200)
    metrics_listen: str = schema.checked(_metrics_listen, default="")


@dataclass(frozen=True)
class DomainBinding:
    """The ways sessions are tied to one domain (one rule set entry)."""

    domain: str = schema.checked(normalize_domain, default="")
    addresses: tuple[str, ...] = schema.checked(_addresses, default=())
    server_names: tuple[str, ...] = schema.checked(_server_names, default=())
    client_networks: tuple[str, ...] = schema.checked(_networks, default=())
    forward_to: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class LogConfig:
    """Where the server log goes."""

    file: str = ""
    level: str = schema.checked(_level, default="INFO")
    domain_logs: bool = True


@dataclass(frozen=True)
class ServerConfig:
    """The whole server configuration."""

    state_root: Path = Path("/var/lib/mdmail")
    hostname: str = schema.checked(normalize_domain, default="localhost.localdomain")
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    milter: MilterConfig = field(default_factory=MilterConfig)
    web: WebConfig = field(default_factory=WebConfig)
    domains: tuple[DomainBinding, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(
        default="(embedded defaults)", compare=False, metadata={"internal": True}
    )

    @property
    def root(self) -> StateRoot:
        """The state root as a StateRoot."""
        return StateRoot(self.state_root)


def load_config(path: Path) -> ServerConfig:
    """Load and validate a server configuration file."""
    data = schema.read_yaml(path)
    config = schema.load(ServerConfig, data, str(path))
    config = _resolve_state_root(config, path)
    check_bindings(config, str(path))
    return replace(config, source=str(path))


def _resolve_state_root(config: ServerConfig, path: Path) -> ServerConfig:
    # A relative state root is taken relative to the config file, so a config in a
    # checkout works wherever the command is run from.
    if config.state_root.is_absolute():
        return config
    return replace(config, state_root=(path.parent / config.state_root).resolve())


def check_bindings(config: ServerConfig, file: str) -> None:
    """Refuse an address, server name or network claimed by two domains."""
    claims: dict[tuple[str, str], str] = {}
    for index, binding in enumerate(config.domains):
        key = f"domains[{index}]"
        if not binding.domain:
            raise ConfigError(file, f"{key}.domain", "missing")
        for kind, values in (
            ("address", binding.addresses),
            ("server name", binding.server_names),
            ("client network", binding.client_networks),
        ):
            for value in values:
                owner = claims.setdefault((kind, value), binding.domain)
                if owner != binding.domain:
                    problem = (
                        f"{kind} {value} is claimed by {owner} and {binding.domain}"
                    )
                    raise ConfigError(file, key, problem)


def find_config(explicit: str | None) -> Path | None:
    """The config file to use: --config, then $MDMAIL_CONFIG, then /etc/mdmail."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(ENV_CONFIG)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
