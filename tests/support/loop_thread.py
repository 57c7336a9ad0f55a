"""An event loop in a background thread, for servers that outlive one test.

The black-box suite shares one Gatekeeper process, one recording upstream and one
fault proxy across a module. pytest-asyncio gives each test its own loop, so the
shared servers run on a loop of their own here and tests reach them across threads
(plain attribute reads and sets; the GIL keeps those whole).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
