"""The pieces every request shares: its visit (domain, session) and page rendering."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mdcore.accounts import Account
from mdcore.config import ServerConfig
from mdcore.layout import StateRoot
from mdcore.logs import for_domain
from mdcore.metrics import LoginOutcome, Metrics, hosted_in
from mdcore.names import display_domain
from mdcore.namespace import Registry
from mdcore.throttle import LoginThrottle
from mdweb.forwarded import Origin, origin, parse_networks
from mdweb.hosts import HostMap
from mdweb.selfservice import Outcome, SelfService
from mdweb.sessions import COOKIE_NAME, Session, SessionCodec, fresh_session

log = logging.getLogger(__name__)

T = TypeVar("T")

# How much of a typed user name a log line repeats.
MAX_LOGGED_NAME = 64

# Argon2 takes 64 MiB a check: a few at once is all a small server should pay.
MAX_PASSWORD_WORK = 4

# What a login's outcome is called in its log line and its metric.
_LOGIN_OUTCOMES = {Outcome.OK: LoginOutcome.OK, Outcome.PENDING: LoginOutcome.PENDING}

# No script, no frames, forms only to ourselves: the page needs nothing more.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Visit:
    """One request as the page sees it: where from, which domain, which session."""

    origin: Origin
    domain: str
    session: Session
    account: Account | None = None

    @property
    def user(self) -> str:
        """The logged-in user, or ""."""
        return self.account.name if self.account is not None else ""


def loggable(text: str) -> str:
    """A typed name made safe for one log line: no control characters, bounded."""
    cleaned = "".join(char if char.isprintable() else "?" for char in text)
    return cleaned[:MAX_LOGGED_NAME] or "-"


def human_size(value: int | None) -> str:
    """Bytes for people: 1.5 MiB; None is unlimited."""
    if value is None:
        return "unlimited"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Site:
    """What the handlers share: config, host map, sessions, throttle, templates."""

    def __init__(
        self, config: ServerConfig, key: bytes, metrics: Metrics | None = None
    ) -> None:
        """Build everything from the config, the signing key and the metrics."""
        self.config = config
        self.service = SelfService(StateRoot(config.state_root))
        registry = Registry(config.root)
        self.hosts = HostMap(registry, config.domains)
        self.metrics = metrics or Metrics(hosted_in(registry))
        self.trusted = parse_networks(config.web.trusted_proxies)
        self.codec = SessionCodec(key, config.web.session_max_age)
        self.throttle = LoginThrottle(
            config.web.login_delay_base, config.web.login_delay_max
        )
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("mdweb", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["size"] = human_size
        self.templates.filters["display"] = display_domain
        self._work: asyncio.Semaphore | None = None

    async def work(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking file step in a worker thread."""
        return await run_in_threadpool(function, *args)

    async def hashing(self, function: Callable[..., T], *args: Any) -> T:
        """Run a step that checks or hashes a password, a few at a time."""
        if self._work is None:
            self._work = asyncio.Semaphore(MAX_PASSWORD_WORK)
        async with self._work:
            return await run_in_threadpool(function, *args)

    async def pause(self, visit: Visit, user: str, ok: bool) -> None:
        """Wait as the POP3 throttle would after this password check."""
        keys = (visit.origin.client, f"{user}@{visit.domain}")
        wait = self.throttle.settle(keys, ok)
        if wait > 0:
            await asyncio.sleep(wait)

    async def visit(self, request: Request) -> Visit | None:
        """The visit of a request, or None when its host is none of our domains."""
        peer = request.client.host if request.client else ""
        found = origin(peer, request.url.scheme, request.headers, self.trusted)
        domain = self.hosts.domain(found.host)
        if domain is None:
            return None
        cookie = request.cookies.get(COOKIE_NAME, "")
        session = self.codec.loads(cookie, domain) if cookie else None
        if session is None:
            return Visit(found, domain, fresh_session(domain))
        return await self._with_account(Visit(found, domain, session))

    async def _with_account(self, visit: Visit) -> Visit:
        # The cookie alone is not enough: the account must still exist, may log
        # in, and have the password the session was opened with.
        if not visit.session.logged_in:
            return visit
        account = await self.work(
            self.service.account, visit.domain, visit.session.user
        )
        if (
            account is None
            or not account.can_log_in
            or self.codec.tag(account.password) != visit.session.tag
        ):
            return replace(visit, session=visit.session.anonymous())
        return replace(visit, account=account)

    def render(
        self, visit: Visit, template: str, status: int = 200, **values: Any
    ) -> Response:
        """A page from a template, with the session cookie and security headers."""
        values.setdefault("message", "")
        page = self.templates.get_template(template).render(
            domain=visit.domain, user=visit.user, csrf=visit.session.csrf, **values
        )
        return self.finish(visit, HTMLResponse(page, status))

    def redirect(self, visit: Visit, path: str = "/") -> Response:
        """See-other to a page of ours (after a POST that changed something)."""
        return self.finish(visit, RedirectResponse(path, status_code=303))

    def finish(self, visit: Visit, response: Response) -> Response:
        """Set the session cookie and the security headers on a response."""
        response.set_cookie(
            COOKIE_NAME,
            self.codec.dumps(visit.session),
            max_age=self.config.web.session_max_age,
            path="/",
            secure=visit.origin.secure,
            httponly=True,
            samesite="strict",
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    def unknown_host(self) -> Response:
        """The page for a host name we do not serve: it names no domain."""
        page = self.templates.get_template("unknown.html").render()
        response = HTMLResponse(page, 404)
        response.headers.update(SECURITY_HEADERS)
        return response

    def log_login(self, visit: Visit, user: str, outcome: Outcome) -> None:
        """One line per login attempt, to the server log and the domain's own."""
        counted = _LOGIN_OUTCOMES.get(outcome, LoginOutcome.FAILED)
        self.metrics.web_login(visit.domain, counted)
        log.info(
            "web: client=%s domain=%s user=%s event=login status=%s",
            visit.origin.client,
            visit.domain,
            loggable(user),
            counted.value,
            extra=for_domain(visit.domain),
        )

    def log_event(self, visit: Visit, event: str) -> None:
        """One line for an event of the logged-in user (such as logout)."""
        log.info(
            "web: client=%s domain=%s user=%s event=%s",
            visit.origin.client,
            visit.domain,
            visit.user,
            event,
            extra=for_domain(visit.domain),
        )

    def log_refused_form(self, visit: Visit, path: str) -> None:
        """One line per POST refused for a missing or wrong CSRF token."""
        log.warning(
            "web: client=%s domain=%s user=%s event=csrf-refused path=%s",
            visit.origin.client,
            visit.domain,
            visit.user or "-",
            loggable(path),
            extra=for_domain(visit.domain),
        )
