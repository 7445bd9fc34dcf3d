"""mdmail explain: which domain a session would be tied to, and by which rule."""

import argparse
from typing import Any

from mdcore.domainchoice import DomainRules, SessionFacts, explain
from mdmail.context import Context


def register(commands: Any) -> None:
    """Add the explain subcommand."""
    parser = commands.add_parser(
        "explain",
        help="which domain a client gets (no network connection is made)",
        description="Apply the config's domain rules to a session described on the "
        "command line: a client from CLIENT connecting to SERVER (optionally asking "
        "for TLS server name SNI) and logging in as LOGIN.",
    )
    parser.add_argument("--client", default="", metavar="ADDRESS")
    parser.add_argument("--server", default="", metavar="ADDRESS")
    parser.add_argument("--sni", default="", metavar="NAME")
    parser.add_argument("--login", default="", metavar="USER")
    parser.set_defaults(handler=explain_command)


def explain_command(context: Context, args: argparse.Namespace) -> None:
    """Print the decision."""
    rules = DomainRules(context.config.domains)
    facts = SessionFacts(args.server, args.client, args.sni, args.login)
    choice = rules.choose(facts)
    context.emit(
        {
            "domain": choice.domain,
            "rule": choice.rule.value,
            "user": choice.user,
            "reason": choice.reason,
        },
        explain(rules, facts),
    )
