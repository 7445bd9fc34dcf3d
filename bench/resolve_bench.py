"""Benchmark: address resolution with many domains and accounts loaded.

Builds a state root with DOMAINS x ACCOUNTS accounts (written straight to the files,
in the format the CLI writes), then measures in one process:
  - the first lookup in each domain (loading its namespace from disk),
  - resolutions per second over a random mix of addresses once all are loaded,
  - the resident memory with every domain loaded.
Run: .venv/bin/python bench/resolve_bench.py [--domains 1000] [--accounts 1000]
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mdcore.atomic import bump_serial
from mdcore.layout import StateRoot
from mdcore.namespace import Registry
from mdcore.resolve import Outcome, resolve

HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43


def build(root: StateRoot, domains: int, accounts: int) -> list[str]:
    """Write the trees; return the domain names."""
    names = [f"d{index:04d}.example" for index in range(domains)]
    for name in names:
        tree = root.tree(name)
        tree.path.mkdir(parents=True)
        lines = [f"user{number:04d}:{HASH}::::::\n" for number in range(accounts)]
        tree.passwd.write_text("".join(lines))
        tree.aliases.write_text(
            "sales: user0001, user0002\nteam: sales, x@outside.example\n"
        )
        tree.settings.write_text("description: bench\n")
    bump_serial(root.serial)
    return names


def addresses(names: list[str], accounts: int, count: int) -> list[str]:
    """A mix of plain, case-changed, +detail, alias, unknown and unhosted addresses."""
    rng = random.Random(7)
    mix = []
    for _ in range(count):
        domain = rng.choice(names)
        user = f"user{rng.randrange(accounts):04d}"
        kind = rng.random()
        if kind < 0.6:
            mix.append(f"{user}@{domain}")
        elif kind < 0.7:
            mix.append(f"{user.upper()}@{domain.upper()}")
        elif kind < 0.8:
            mix.append(f"{user}+tag@{domain}")
        elif kind < 0.9:
            mix.append(f"sales@{domain}")
        elif kind < 0.97:
            mix.append(f"nobody@{domain}")
        else:
            mix.append(f"{user}@not-hosted.example")
    return mix


def rss_mb() -> float:
    """Peak resident set size of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="mdmail-bench-"))
    try:
        root = StateRoot(folder / "state")
        names = build(root, args.domains, args.accounts)
        # The trees of a running server were written long before; flush the fresh
        # ones so the kernel's write-back does not land inside the measurement.
        os.sync()
        rss_before = rss_mb()
        registry = Registry(root)

        first = []
        for name in names:
            started = time.perf_counter()
            result = resolve(registry, f"user0001@{name}")
            first.append(time.perf_counter() - started)
            assert result.outcome is Outcome.ACCOUNT
        rss_loaded = rss_mb()

        mix = addresses(names, args.accounts, args.lookups)
        started = time.perf_counter()
        for address in mix:
            resolve(registry, address)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(folder)

    figures = {
        "domains": args.domains,
        "accounts_per_domain": args.accounts,
        "resolutions_per_second": round(len(mix) / elapsed),
        "first_lookup_ms_median": round(statistics.median(first) * 1000, 2),
        "first_lookup_ms_p99": round(statistics.quantiles(first, n=100)[98] * 1000, 2),
        "first_lookup_ms_max": round(max(first) * 1000, 2),
        "rss_mb_before_load": round(rss_before, 1),
        "rss_mb_all_loaded": round(rss_loaded, 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
