"""Login throttling shared by the POP3 proxy and the web page.

Each failed login makes the next answer for the same client address or account
wait twice as long, up to a bound; the state is kept in memory, in one process.
It is touched only from one event loop, so it needs no lock.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# A client address or account with no failure for this long starts afresh.
FORGET_AFTER = 15 * 60.0
# Bound on remembered keys, so a spray of addresses cannot grow memory.
MAX_REMEMBERED = 100_000


@dataclass
class _Record:
    failures: int
    last: float


class LoginThrottle:
    """Failed logins per key (client address, account): each doubles the wait.

    The first failure waits `base` seconds, each further one twice the one
    before, up to `maximum`; a success clears the keys it names. Once a key
    has failed, a later success waits as long as a failure would, so that
    giving up early on a slow answer tells an attacker nothing.
    """

    def __init__(
        self,
        base: float,
        maximum: float,
        forget_after: float = FORGET_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start with no failure remembered."""
        self.base = base
        self.maximum = maximum
        self.forget_after = forget_after
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def failures(self, key: str) -> int:
        """Recent failures of a key (0 once forgotten)."""
        record = self._records.get(key)
        if record is None or self.clock() - record.last > self.forget_after:
            return 0
        return record.failures

    def settle(self, keys: tuple[str, ...], ok: bool) -> float:
        """Record one attempt's outcome; returns the seconds to wait before replying."""
        prior = max((self.failures(key) for key in keys), default=0)
        if ok:
            for key in keys:
                self._records.pop(key, None)
            return 0.0 if prior == 0 else self.wait(prior + 1)
        for key in keys:
            self._record_failure(key)
        return self.wait(prior + 1)

    def wait(self, failures: int) -> float:
        """The wait after the given number of failures in a row."""
        if failures <= 0:
            return 0.0
        return float(min(self.base * 2 ** min(failures - 1, 60), self.maximum))

    def _record_failure(self, key: str) -> None:
        now = self.clock()
        failures = self.failures(key) + 1
        self._records.pop(key, None)
        self._records[key] = _Record(failures, now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop expired records (oldest first) and any over the bound."""
        while self._records:
            oldest = next(iter(self._records.values()))
            expired = now - oldest.last > self.forget_after
            if not expired and len(self._records) <= MAX_REMEMBERED:
                return
            self._records.popitem(last=False)
