"""What a user and a domain admin can do on the page, without HTTP.

Every change goes through mdcore's Admin, so the web page makes the same locked,
atomic writes as `mdmail account ...`. Each method blocks (password hashing,
file writes): the web layer runs them in worker threads.
"""

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from mdcore.accounts import ACTIVE, PENDING, Account
from mdcore.admin import Admin
from mdcore.errors import AdminError, InvalidNameError
from mdcore.layout import StateRoot
from mdcore.logs import DOMAIN_LOG_NAME, for_domain
from mdcore.names import check_local_part, fold_local
from mdcore.passwords import verify_password
from mdcore.quota import QuotaLimits, read_usage
from mdcore.settings import DomainSettings
from mdweb.logtail import tail_lines
from mdweb.passwordpolicy import Weakness, check_password

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How an action ended; the value is what the page tells the user."""

    OK = "Done."
    LOGIN_FAILED = "Login failed: wrong user name or password."
    PENDING = "This account waits for approval by the domain's administrator."
    WRONG_PASSWORD = "The current password is wrong."
    MISMATCH = "The two new passwords differ."
    REGISTRATION_CLOSED = "This domain does not take registrations."
    NAME_REFUSED = "That user name cannot be registered."
    NOT_ALLOWED = "Only the domain's administrators may do that."
    NO_SUCH_REQUEST = "There is no such request waiting."


@dataclass(frozen=True)
class LoginResult:
    """The outcome of a login and, when the password was right, the account."""

    outcome: Outcome
    user: str
    account: Account | None = None


@dataclass(frozen=True)
class QuotaView:
    """An account's mailbox use against its limits (None: unlimited)."""

    used_bytes: int
    used_messages: int
    limit_bytes: int | None
    limit_messages: int | None


class SelfService:
    """The page's actions on the accounts of the hosted domains under one root."""

    def __init__(self, root: StateRoot) -> None:
        """Work on the domains under root."""
        self.admin = Admin(root)

    def settings(self, domain: str) -> DomainSettings:
        """The domain's current settings."""
        return self.admin.settings(domain)

    def account(self, domain: str, user: str) -> Account | None:
        """The account of that name, or None (bad names are simply unknown)."""
        try:
            return self.admin.account(domain, user)
        except (AdminError, InvalidNameError):
            return None

    def login(self, domain: str, user: str, password: str) -> LoginResult:
        """Check a login; unknown users cost and read the same as wrong passwords."""
        key = fold_local(user, self.settings(domain).case_sensitive_local_parts)
        account = self.account(domain, key)
        stored = account.password if account is not None else None
        if not verify_password(stored, password) or account is None:
            return LoginResult(Outcome.LOGIN_FAILED, key)

        # Like POP3: only someone who knows the password learns the state.
        if not account.can_log_in:
            return LoginResult(Outcome.PENDING, key)
        return LoginResult(Outcome.OK, key, account)

    def is_admin(self, domain: str, user: str) -> bool:
        """Whether the user is one of the domain's admins."""
        settings = self.settings(domain)
        folded = settings.case_sensitive_local_parts
        return user in {fold_local(name, folded) for name in settings.admins}

    def quota(self, domain: str, account: Account) -> QuotaView:
        """The account's mailbox use, from its maildirsize file."""
        maildir = self.admin.tree(domain).maildir(account.name)
        limits = QuotaLimits(account.quota_bytes, account.quota_messages)
        usage = read_usage(maildir, limits)
        return QuotaView(
            usage.bytes, usage.messages, account.quota_bytes, account.quota_messages
        )

    def change_password(
        self, domain: str, user: str, current: str, new: str, again: str
    ) -> Outcome | Weakness:
        """Set a new password after checking the current one and the policy."""
        account = self.account(domain, user)
        stored = account.password if account is not None else None
        if not verify_password(stored, current):
            return Outcome.WRONG_PASSWORD
        problem = self._check_new(domain, user, new, again)
        if problem is not None:
            return problem
        self.admin.set_password(domain, user, new)
        log.info(
            "web: domain=%s user=%s event=password-changed",
            domain,
            user,
            extra=for_domain(domain),
        )
        return Outcome.OK

    def register(
        self, domain: str, user: str, password: str, again: str
    ) -> Outcome | Weakness:
        """Ask for an account: it is made pending, to wait for an admin."""
        settings = self.settings(domain)
        if not settings.self_registration:
            return Outcome.REGISTRATION_CLOSED
        try:
            key = fold_local(
                check_local_part(user), settings.case_sensitive_local_parts
            )
        except InvalidNameError:
            return Outcome.NAME_REFUSED
        problem = self._check_new(domain, key, password, again)
        if problem is not None:
            return problem
        try:
            self.admin.add_account(domain, key, password, state=PENDING)
        except AdminError:
            # Limitation: like any sign-up form, this one shows that a name is
            # taken; throttling registrations per client would slow such probes.
            return Outcome.NAME_REFUSED
        log.info(
            "web: domain=%s user=%s event=registration-requested",
            domain,
            key,
            extra=for_domain(domain),
        )
        return Outcome.OK

    def pending(self, domain: str) -> list[str]:
        """Names of the accounts that wait for approval."""
        return [a.name for a in self.admin.accounts(domain) if a.state == PENDING]

    def approve(self, domain: str, admin_user: str, user: str) -> Outcome:
        """Let a pending account log in."""
        if not self.is_admin(domain, admin_user):
            return Outcome.NOT_ALLOWED
        if user not in self.pending(domain):
            return Outcome.NO_SUCH_REQUEST
        self.admin.update_account(domain, user, state=ACTIVE)
        log.info(
            "web: domain=%s user=%s event=registration-approved by=%s",
            domain,
            user,
            admin_user,
            extra=for_domain(domain),
        )
        return Outcome.OK

    def refuse(self, domain: str, admin_user: str, user: str) -> Outcome:
        """Turn a pending account down; its (empty) mailbox is archived."""
        if not self.is_admin(domain, admin_user):
            return Outcome.NOT_ALLOWED
        if user not in self.pending(domain):
            return Outcome.NO_SUCH_REQUEST
        self.admin.remove_account(domain, user)
        log.info(
            "web: domain=%s user=%s event=registration-refused by=%s",
            domain,
            user,
            admin_user,
            extra=for_domain(domain),
        )
        return Outcome.OK

    def delete(self, domain: str, user: str, password: str) -> Outcome:
        """Remove the user's own account, its mail archived as the CLI does."""
        account = self.account(domain, user)
        stored = account.password if account is not None else None
        if not verify_password(stored, password):
            return Outcome.WRONG_PASSWORD
        archived = self.admin.remove_account(domain, user)
        log.info(
            "web: domain=%s user=%s event=account-deleted archive=%s",
            domain,
            user,
            archived.name if archived else "-",
            extra=for_domain(domain),
        )
        return Outcome.OK

    def domain_log(self, domain: str, count: int) -> list[str]:
        """The last lines of the domain's own log."""
        path: Path = self.admin.tree(domain).logs / DOMAIN_LOG_NAME
        return tail_lines(path, count)

    def _check_new(
        self, domain: str, user: str, new: str, again: str
    ) -> Outcome | Weakness | None:
        if new != again:
            return Outcome.MISMATCH
        return check_password(self.settings(domain), user, new)
