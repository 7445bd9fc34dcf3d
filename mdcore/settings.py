"""Per-domain settings: the policy each hosted domain sets for itself."""

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mdcore import schema
from mdcore.names import check_local_part, normalize_domain


class OverQuota(enum.Enum):
    """What a recipient over quota is told."""

    DEFER = "defer"  # 452 4.2.2 at RCPT: the MTA keeps trying (RFC 3463 section 3.3)
    BOUNCE = "bounce"  # 552 5.2.2 after DATA: the sender gets a bounce at once


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _id(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _delimiter(value: str) -> str:
    if len(value) > 4 or any(char.isalnum() or char in "@/. \t" for char in value):
        raise ValueError("must be up to 4 punctuation characters such as '+' or '-'")
    return value


def _over_quota(value: str) -> str:
    choices = [choice.value for choice in OverQuota]
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return value


def _local_parts(value: tuple[str, ...]) -> tuple[str, ...]:
    for local in value:
        check_local_part(local)
    return value


def _domain_or_empty(value: str) -> str:
    return normalize_domain(value) if value else ""


def _senders(value: tuple[str, ...]) -> tuple[str, ...]:
    for sender in value:
        if not sender or " " in sender:
            raise ValueError(f"{sender!r} is not an address or @domain")
    return tuple(sender.lower() for sender in value)


@dataclass(frozen=True)
class DomainSettings:
    """Settings of one hosted domain, from settings.yaml in its tree."""

    # Local parts are compared without regard to case unless this is set (RFC 5321
    # section 2.4 lets the receiving domain decide).
    case_sensitive_local_parts: bool = False
    recipient_delimiter: str = schema.checked(_delimiter, default="+")
    default_quota_bytes: int | None = schema.checked(_positive, default=None)
    default_quota_messages: int | None = schema.checked(_positive, default=None)
    over_quota: str = schema.checked(_over_quota, default=OverQuota.DEFER.value)
    max_message_size: int | None = schema.checked(_positive, default=None)
    max_recipients: int | None = schema.checked(_positive, default=None)
    refused_senders: tuple[str, ...] = schema.checked(_senders, default=())
    accept_other_domains: bool = True
    hostname: str = schema.checked(_domain_or_empty, default="")
    outgoing_address: str = ""
    uid: int | None = schema.checked(_id, default=None)
    gid: int | None = schema.checked(_id, default=None)
    description: str = ""
    # The web page: who administers the domain there (local parts of its own
    # accounts), whether people may ask for an account, and the password rules.
    admins: tuple[str, ...] = schema.checked(_local_parts, default=())
    self_registration: bool = False
    password_min_length: int = schema.checked(_positive, default=10)
    refuse_common_passwords: bool = True

    @property
    def over_quota_policy(self) -> OverQuota:
        """The over-quota setting as an enum."""
        return OverQuota(self.over_quota)


def load_settings(path: Path) -> DomainSettings:
    """Load a domain's settings file; a missing file means all defaults."""
    if not path.exists():
        return DomainSettings()
    return schema.load(DomainSettings, schema.read_yaml(path), str(path))


def update_settings(
    settings: DomainSettings, changes: dict[str, Any]
) -> DomainSettings:
    """Return settings with changes applied, validated as if read from a file."""
    merged = schema.dump(settings)
    merged.update(changes)
    checked = schema.load(DomainSettings, merged, "settings")
    return replace(checked)
