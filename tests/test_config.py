"""Loading and validation of the server config and per-domain settings."""

from pathlib import Path

import pytest

from mdcore.config import ServerConfig, load_config
from mdcore.errors import ConfigError
from mdcore.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "mdmail.yaml") -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_config_loads() -> None:
    """The commented example shipped in etc/ is valid."""
    config = load_config(REPO / "etc" / "mdmail.example.yaml")
    assert config.lmtp.max_line_length == 1000
    assert config.domains[0].domain == "abc.example"
    assert config.domains[0].addresses == ("192.0.2.10", "2001:db8::10")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    """An empty config is all defaults, with the state root taken from it."""
    config = load_config(write(tmp_path, ""))
    assert config.lmtp == ServerConfig().lmtp


def test_relative_state_root_is_relative_to_the_file(tmp_path: Path) -> None:
    """state_root: state means the folder beside the config file."""
    config = load_config(write(tmp_path, "state_root: state\n"))
    assert config.state_root == (tmp_path / "state").resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "the top level must be a mapping of keys"),
        ("just text\n", "the top level must be a mapping of keys"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("lmtp:\n  max_sessions: many\n", "lmtp.max_sessions: must be a whole number"),
        ("lmtp:\n  max_sessions: 0\n", "lmtp.max_sessions: must be greater than 0"),
        ("lmtp:\n  max_sessions: true\n", "lmtp.max_sessions: must be a whole number"),
        ("lmtp: [1]\n", "lmtp: must be a mapping"),
        ("lmtp:\n  listen: inet:1.2.3.4:24\n", "lmtp.listen: must be a list"),
        ("lmtp:\n  listen: [tcp:24]\n", "lmtp.listen: 'tcp:24' is not"),
        ("lmtp:\n  socket_mode: '999'\n", "lmtp.socket_mode: must be an octal"),
        ("hostname: 'a b'\n", "hostname: invalid domain name"),
        ("log:\n  level: loud\n", "log.level: must be debug"),
        ("domains:\n  - addresses: [1.2.3.4]\n", "domains[0].domain: missing"),
        (
            "domains:\n  - domain: a.example\n    addresses: [300.1.1.1]\n",
            "domains[0].addresses",
        ),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """Each problem stops loading with one line naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = str(caught.value)
    assert line.startswith(str(path) + ": ")
    assert message in line
    assert "\n" not in line


def test_address_claimed_twice_is_refused(tmp_path: Path) -> None:
    """One server address cannot belong to two domains."""
    text = (
        "domains:\n"
        "  - domain: a.example\n    addresses: [127.0.0.2]\n"
        "  - domain: b.example\n    addresses: ['127.0.0.2']\n"
    )
    with pytest.raises(
        ConfigError, match=r"127\.0\.0\.2 is claimed by a\.example and b\.example"
    ):
        load_config(write(tmp_path, text))


def test_domain_settings_validation(tmp_path: Path) -> None:
    """A domain's settings file is checked like the server config."""
    path = write(tmp_path, "over_quota: sometimes\n", "settings.yaml")
    with pytest.raises(ConfigError, match="over_quota: must be one of defer, bounce"):
        load_settings(path)
    path.write_text("recipient_delimiter: '@'\n")
    with pytest.raises(ConfigError, match="recipient_delimiter"):
        load_settings(path)
    path.write_text("max_message_size: 1000\nrefused_senders: [Bad@X.example]\n")
    settings = load_settings(path)
    assert settings.refused_senders == ("bad@x.example",)
