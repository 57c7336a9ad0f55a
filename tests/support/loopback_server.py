"""A TCP server on 127.0.0.1 whose connection handlers all end when it stops."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any


class LoopbackServer(ABC):
    """Subclasses implement `_on_connection`; `start` picks a free port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, **options: Any) -> None:
        self._server = await asyncio.start_server(self._tracked, "127.0.0.1", 0, **options)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _tracked(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._on_connection(reader, writer)
        finally:
            self._tasks.discard(task)

    @abstractmethod
    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Serve one connection; it is cancelled when the server stops."""
