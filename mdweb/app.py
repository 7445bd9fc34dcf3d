"""The web page's routes: login, account, password, registration, approval, log.

Every POST carries the session's CSRF token in a hidden field and is refused
with 403, changing nothing, without it. Pages are plain HTML forms: no script.
"""

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mdcore.config import ServerConfig
from mdcore.layout import StateRoot
from mdcore.metrics import Metrics
from mdweb import report
from mdweb.pages import Site, Visit
from mdweb.selfservice import Outcome
from mdweb.sessions import token_matches

Handler = Callable[[Site, Visit, FormData], Awaitable[Response]]


async def home(site: Site, visit: Visit, form: FormData) -> Response:
    """The account page when logged in, else the login form."""
    if visit.account is None:
        return await login_page(site, visit)
    return await account_page(site, visit)


async def login_page(site: Site, visit: Visit, message: str = "") -> Response:
    """The login form."""
    settings = await site.work(site.service.settings, visit.domain)
    return site.render(
        visit,
        "login.html",
        status=401 if message else 200,
        message=message,
        registration=settings.self_registration,
    )


async def account_page(
    site: Site, visit: Visit, message: str = "", status: int = 200
) -> Response:
    """The account page: quota, password change, deletion, admin tasks."""
    assert visit.account is not None
    service = site.service
    quota = await site.work(service.quota, visit.domain, visit.account)
    admin = await site.work(service.is_admin, visit.domain, visit.user)
    pending = await site.work(service.pending, visit.domain) if admin else []
    return site.render(
        visit,
        "account.html",
        status=status,
        message=message,
        quota=quota,
        admin=admin,
        pending=pending,
        reports=admin and report.available(),
    )


async def login(site: Site, visit: Visit, form: FormData) -> Response:
    """Check a login; one answer for every failure, after the throttle's wait."""
    user, password = _field(form, "user").strip(), _field(form, "password")
    result = await site.hashing(site.service.login, visit.domain, user, password)
    await site.pause(visit, result.user, result.outcome is not Outcome.LOGIN_FAILED)
    site.log_login(visit, result.user, result.outcome)
    if result.account is None:
        return await login_page(site, visit, result.outcome.value)
    session = site.codec.login(visit.session, result.user, result.account.password)
    return site.redirect(Visit(visit.origin, visit.domain, session, result.account))


async def logout(site: Site, visit: Visit, form: FormData) -> Response:
    """End the session."""
    if visit.account is not None:
        site.log_event(visit, "logout")
    return site.redirect(Visit(visit.origin, visit.domain, visit.session.anonymous()))


async def password(site: Site, visit: Visit, form: FormData) -> Response:
    """Change the password, with the current one."""
    if visit.account is None:
        return await login_page(site, visit)
    outcome = await site.hashing(
        site.service.change_password,
        visit.domain,
        visit.user,
        _field(form, "current"),
        _field(form, "new"),
        _field(form, "again"),
    )
    await site.pause(visit, visit.user, outcome is not Outcome.WRONG_PASSWORD)
    if outcome is not Outcome.OK:
        return await account_page(site, visit, outcome.value, status=400)

    # The password hash changed, and with it the session tag: renew this one.
    account = await site.work(site.service.account, visit.domain, visit.user)
    assert account is not None
    session = site.codec.login(visit.session, visit.user, account.password)
    renewed = Visit(visit.origin, visit.domain, session, account)
    return await account_page(site, renewed, "Your password was changed.")


async def register_page(site: Site, visit: Visit, form: FormData) -> Response:
    """The registration form (or a note that the domain takes none)."""
    settings = await site.work(site.service.settings, visit.domain)
    return site.render(
        visit, "register.html", open=settings.self_registration, message=""
    )


async def register(site: Site, visit: Visit, form: FormData) -> Response:
    """Ask for an account, to wait for a domain admin's approval."""
    outcome = await site.hashing(
        site.service.register,
        visit.domain,
        _field(form, "user").strip(),
        _field(form, "password"),
        _field(form, "again"),
    )
    if outcome is Outcome.OK:
        text = "Your request was sent. You can log in once an admin approves it."
        return site.render(visit, "message.html", title="Request sent", text=text)
    settings = await site.work(site.service.settings, visit.domain)
    return site.render(
        visit,
        "register.html",
        status=400,
        open=settings.self_registration,
        message=outcome.value,
    )


async def delete(site: Site, visit: Visit, form: FormData) -> Response:
    """Delete the user's own account (mail archived), confirmed by password."""
    if visit.account is None:
        return await login_page(site, visit)
    if _field(form, "confirm") != "yes":
        text = "Tick the box to confirm the deletion."
        return await account_page(site, visit, text, status=400)
    outcome = await site.hashing(
        site.service.delete, visit.domain, visit.user, _field(form, "password")
    )
    await site.pause(visit, visit.user, outcome is Outcome.OK)
    if outcome is not Outcome.OK:
        return await account_page(site, visit, outcome.value, status=400)
    gone = Visit(visit.origin, visit.domain, visit.session.anonymous())
    text = "Your account was deleted. Its mail was archived by the server."
    return site.render(gone, "message.html", title="Account deleted", text=text)


async def approve(site: Site, visit: Visit, form: FormData) -> Response:
    """A domain admin lets a pending account in."""
    return await _decide(site, visit, form, site.service.approve)


async def refuse(site: Site, visit: Visit, form: FormData) -> Response:
    """A domain admin turns a pending account down."""
    return await _decide(site, visit, form, site.service.refuse)


async def _decide(
    site: Site, visit: Visit, form: FormData, action: Callable[[str, str, str], Outcome]
) -> Response:
    if visit.account is None:
        return await login_page(site, visit)
    outcome = await site.work(action, visit.domain, visit.user, _field(form, "user"))
    if outcome is Outcome.NOT_ALLOWED:
        return site.render(
            visit, "message.html", 403, title="Not allowed", text=outcome.value
        )
    if outcome is not Outcome.OK:
        return await account_page(site, visit, outcome.value, status=400)
    return site.redirect(visit)


async def domain_log(site: Site, visit: Visit, form: FormData) -> Response:
    """The domain's own log, for its admins only."""
    if visit.account is None:
        return await login_page(site, visit)
    if not await site.work(site.service.is_admin, visit.domain, visit.user):
        text = Outcome.NOT_ALLOWED.value
        return site.render(visit, "message.html", 403, title="Not allowed", text=text)
    count = site.config.web.log_lines
    lines = await site.work(site.service.domain_log, visit.domain, count)
    return site.render(visit, "log.html", lines=lines, count=count)


async def domain_report(site: Site, visit: Visit, form: FormData) -> Response:
    """The domain's mail report of the last week, for its admins only."""
    if visit.account is None:
        return await login_page(site, visit)
    if not await site.work(site.service.is_admin, visit.domain, visit.user):
        text = Outcome.NOT_ALLOWED.value
        return site.render(visit, "message.html", 403, title="Not allowed", text=text)
    root = StateRoot(site.config.state_root)
    page = await site.work(report.domain_report, root, visit.domain)
    if page is None:
        text = "Reports are not installed on this server."
        return site.render(visit, "message.html", 404, title="No report", text=text)
    return site.finish(visit, HTMLResponse(page))


def _field(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def _endpoint(site: Site, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: unknown host -> 404, POST without the CSRF token -> 403."""

    async def endpoint(request: Request) -> Response:
        visit = await site.visit(request)
        if visit is None:
            return site.unknown_host()
        form = await request.form() if request.method == "POST" else FormData()
        if request.method == "POST" and not token_matches(
            visit.session, _field(form, "csrf")
        ):
            site.log_refused_form(visit, request.url.path)
            text = "The form was stale or forged. Reload the page and try again."
            return site.render(visit, "message.html", 403, title="Refused", text=text)
        return await handler(site, visit, form)

    return endpoint


def create_app(
    config: ServerConfig, key: bytes, metrics: Metrics | None = None
) -> Starlette:
    """The web application for this config, signing sessions with key."""
    site = Site(config, key, metrics)
    routes = [
        ("/", home, ["GET"]),
        ("/login", login, ["POST"]),
        ("/logout", logout, ["POST"]),
        ("/password", password, ["POST"]),
        ("/register", register_page, ["GET"]),
        ("/register", register, ["POST"]),
        ("/delete", delete, ["POST"]),
        ("/approve", approve, ["POST"]),
        ("/refuse", refuse, ["POST"]),
        ("/log", domain_log, ["GET"]),
        ("/report", domain_report, ["GET"]),
    ]
    return Starlette(
        routes=[
            Route(path, _endpoint(site, handler), methods=methods)
            for path, handler, methods in routes
        ]
    )
