"""Running a server's event loop: uvloop where it is installed, asyncio's otherwise.

uvloop (libuv under the asyncio API) cuts the per-event cost of the loop, which is
most of what a small-message delivery costs in CPU; behaviour is the same either way.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """Run main to completion on a fresh loop, uvloop's when available."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
