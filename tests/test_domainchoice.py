"""The shared rule that ties a session to a domain."""

import pytest

from mdcore.config import DomainBinding
from mdcore.domainchoice import DomainRules, Rule, SessionFacts, explain, split_login

RULES = DomainRules(
    (
        DomainBinding(
            domain="abc.example",
            addresses=("127.0.0.2", "2001:db8::2"),
            server_names=("pop.abc.example",),
            client_networks=("10.0.0.0/8",),
        ),
        DomainBinding(
            domain="xyz.example",
            addresses=("127.0.0.3",),
            server_names=("pop.xyz.example",),
            client_networks=("10.1.0.0/16", "2001:db8:1::/48"),
        ),
    )
)


@pytest.mark.parametrize(
    ("facts", "domain", "rule", "user"),
    [
        (
            SessionFacts("127.0.0.2", "127.0.0.1", "", "foo"),
            "abc.example",
            Rule.SERVER_ADDRESS,
            "foo",
        ),
        (
            SessionFacts("127.0.0.3", "127.0.0.1", "", "foo"),
            "xyz.example",
            Rule.SERVER_ADDRESS,
            "foo",
        ),
        (
            SessionFacts("::ffff:127.0.0.3", "", "", "foo"),
            "xyz.example",
            Rule.SERVER_ADDRESS,
            "foo",
        ),
        (
            SessionFacts("2001:db8::2", "", "", "foo"),
            "abc.example",
            Rule.SERVER_ADDRESS,
            "foo",
        ),
        (
            SessionFacts("127.0.0.9", "", "POP.XYZ.example", "foo"),
            "xyz.example",
            Rule.SERVER_NAME,
            "foo",
        ),
        (
            SessionFacts("127.0.0.9", "10.2.3.4", "", "foo"),
            "abc.example",
            Rule.CLIENT_NETWORK,
            "foo",
        ),
        (
            SessionFacts("127.0.0.9", "10.1.3.4", "", "foo"),
            "xyz.example",
            Rule.CLIENT_NETWORK,
            "foo",
        ),
        (
            SessionFacts("127.0.0.9", "2001:db8:1::5", "", "foo"),
            "xyz.example",
            Rule.CLIENT_NETWORK,
            "foo",
        ),
        (
            SessionFacts("127.0.0.2", "", "", "foo@xyz.example"),
            "xyz.example",
            Rule.LOGIN,
            "foo",
        ),
        (
            SessionFacts("127.0.0.2", "", "", "foo%XYZ.example"),
            "xyz.example",
            Rule.LOGIN,
            "foo",
        ),
        (
            SessionFacts("127.0.0.2", "", "pop.xyz.example", "foo"),
            "abc.example",
            Rule.SERVER_ADDRESS,
            "foo",
        ),
        (SessionFacts("127.0.0.9", "192.0.2.1", "", "foo"), None, Rule.NONE, "foo"),
        (
            SessionFacts("", "", "", "foo@bücher.example"),
            "xn--bcher-kva.example",
            Rule.LOGIN,
            "foo",
        ),
    ],
)
def test_rule_table(
    facts: SessionFacts, domain: str | None, rule: Rule, user: str
) -> None:
    """Each session gets the domain of the first rule that applies."""
    choice = RULES.choose(facts)
    assert (choice.domain, choice.rule, choice.user) == (domain, rule, user)


def test_login_always_names_its_own_domain() -> None:
    """A login with a domain is never checked against the address's domain."""
    choice = RULES.choose(
        SessionFacts("127.0.0.2", "10.0.0.1", "pop.abc.example", "foo@xyz.example")
    )
    assert choice.address == "foo@xyz.example"


@pytest.mark.parametrize(
    ("login", "split"),
    [
        ("foo", ("foo", "")),
        ("foo@abc.example", ("foo", "abc.example")),
        ("a@b@abc.example", ("a@b", "abc.example")),
        ("foo%abc.example", ("foo", "abc.example")),
        ("@abc.example", ("@abc.example", "")),
        ("foo@not a domain", ("foo@not a domain", "")),
    ],
)
def test_split_login(login: str, split: tuple[str, str]) -> None:
    """user@domain and user%domain split at the last separator; bad domains don't."""
    assert split_login(login) == split


def test_explain_says_which_rule() -> None:
    """explain() names the domain, the rule and the address checked."""
    line = explain(RULES, SessionFacts("127.0.0.3", "", "", "foo"))
    assert line == (
        "domain xyz.example by rule server-address (server address 127.0.0.3); "
        "the user is checked as foo@xyz.example"
    )
    assert explain(RULES, SessionFacts("127.0.0.9")) == (
        "no domain: no rule names a domain for this session"
    )
