"""Exceptions shared by every component, each carrying a message fit for an admin."""


class MdmailError(Exception):
    """Base class: the message is one line an admin can act on."""


class InvalidNameError(MdmailError, ValueError):
    """A domain name, local part or address is malformed or unsafe."""


class ConfigError(MdmailError):
    """A configuration file is unreadable or has a bad key or value."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class AdminError(MdmailError):
    """An admin request that cannot be carried out (duplicate, missing, loop...)."""
