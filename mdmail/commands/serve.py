"""mdmail serve: run one of the servers in the foreground."""

import argparse
import importlib
from dataclasses import replace
from typing import Any

from mdcore import schema
from mdcore.config import ServerConfig, WebConfig
from mdcore.errors import AdminError, ConfigError
from mdcore.layout import StateRoot
from mdcore.logs import setup_logging
from mdmail.context import Context

LISTEN_HELP = "unix:/path or inet:ADDRESS:PORT, instead of the config's (repeatable)"


def register(commands: Any) -> None:
    """Add the serve subcommands."""
    parser = commands.add_parser("serve", help="run a server in the foreground")
    servers = parser.add_subparsers(dest="server", required=True, metavar="SERVER")
    lmtp = servers.add_parser(
        "lmtp",
        help="the LMTP delivery server (SIGTERM stops, SIGHUP reloads)",
    )
    lmtp.add_argument("--listen", action="append", metavar="SPEC", help=LISTEN_HELP)
    lmtp.set_defaults(handler=serve_lmtp)

    pop3 = servers.add_parser(
        "pop3",
        help="the multi-domain POP3 proxy (SIGTERM stops, SIGHUP reloads)",
    )
    pop3.add_argument("--listen", action="append", metavar="SPEC", help=LISTEN_HELP)
    pop3.add_argument(
        "--tls-listen",
        action="append",
        metavar="SPEC",
        help="implicit TLS (POP3S) listener, instead of the config's (repeatable)",
    )
    pop3.set_defaults(handler=serve_pop3)

    web = servers.add_parser(
        "web",
        help="the self-service web page of every domain (SIGTERM stops)",
    )
    web.add_argument(
        "--listen",
        metavar="ADDRESS:PORT",
        help="where to listen, instead of the config's web.listen",
    )
    web.set_defaults(handler=serve_web)

    milter = servers.add_parser(
        "milter",
        help="the SMTP-time recipient milter for Postfix or sendmail (SIGTERM stops)",
    )
    milter.add_argument(
        "--socket",
        metavar="SPEC",
        help="inet:PORT@ADDRESS or unix:/path, instead of the config's milter.socket",
    )
    milter.set_defaults(handler=serve_milter)


def log_root(config: ServerConfig) -> StateRoot | None:
    """The state root whose domain logs get each domain's lines; None if turned off."""
    return config.root if config.log.domain_logs else None


def serve_lmtp(context: Context, args: argparse.Namespace) -> None:
    """Run the LMTP server."""
    config = context.config
    if args.listen:
        config = replace(config, lmtp=replace(config.lmtp, listen=tuple(args.listen)))
    setup_logging("lmtpd", config.log.level, config.log.file, log_root(config))
    # Each server imports its own component only: less memory in every process.
    from lmtpd import main as lmtp_main

    status = lmtp_main.run(config)
    if status:
        raise SystemExit(status)


def serve_pop3(context: Context, args: argparse.Namespace) -> None:
    """Run the POP3 proxy."""
    config = context.config
    pop3 = config.pop3
    if args.listen:
        pop3 = replace(pop3, listen=tuple(args.listen))
    if args.tls_listen:
        pop3 = replace(pop3, tls_listen=tuple(args.tls_listen))
    config = replace(config, pop3=pop3)
    setup_logging("pop3proxy", config.log.level, config.log.file, log_root(config))
    from pop3proxy import main as pop3_main

    pop3_main.run(config)


def serve_web(context: Context, args: argparse.Namespace) -> None:
    """Run the self-service web page."""
    config = context.config
    if args.listen:
        try:
            web = schema.load(WebConfig, {"listen": args.listen}, "--listen")
        except ConfigError as error:
            raise AdminError(str(error)) from None
        config = replace(config, web=replace(config.web, listen=web.listen))
    try:
        # Imported by name: Starlette and uvicorn are the optional web extra.
        web_server = importlib.import_module("mdweb.server")
    except ImportError as error:
        raise AdminError(
            f"the web page needs its extra ({error}): pip install 'mdmail[web]'"
        ) from None
    setup_logging("mdweb", config.log.level, config.log.file, log_root(config))
    web_server.run(config)


def serve_milter(context: Context, args: argparse.Namespace) -> None:
    """Run the milter (pymilter is imported only here: it is an optional extra)."""
    try:
        # Imported by name: pymilter is an optional extra, needed only here.
        service = importlib.import_module("mdmilter.service")
    except ImportError as error:
        raise AdminError(
            f"the milter needs pymilter ({error}): pip install 'mdmail[milter]'"
        ) from None
    config = context.config
    setup_logging("mdmilter", config.log.level, config.log.file, log_root(config))
    service.run(config, args.socket)
