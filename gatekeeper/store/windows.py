"""Behaviour windows for many clients, in bounded memory.

Keys are client addresses and client networks, which an attacker chooses: a
botnet or an IPv6 sweep can present millions. The table therefore holds at most
`max_clients` windows and forgets the least recently seen one first; a window
idle for longer than `idle_expiry` seconds is dropped as soon as it reaches the
old end. Forgetting a client costs little: it starts again with empty counters,
the same as a client seen for the first time.
"""

from __future__ import annotations

from collections import OrderedDict

from gatekeeper.core.behaviour import BehaviourConfig, Signals, Window, note_refusal, record
from gatekeeper.errors import SettingsError

# Expired windows dropped per insert at most: an insert adds one window, so two drain
# any backlog while keeping every call's cost bounded.
_EXPIRE_PER_CALL = 2


class WindowTable:
    """Key -> `Window`, least recently seen first."""

    __slots__ = ("_idle", "_max", "_windows")

    def __init__(self, max_clients: int = 100_000, idle_expiry: float = 3600.0) -> None:
        if max_clients < 1:
            raise SettingsError("behaviour.max_clients: must be at least 1")
        if not idle_expiry > 0:
            raise SettingsError("behaviour.idle_expiry: must be greater than 0")
        self._windows: OrderedDict[str, Window] = OrderedDict()
        self._max = max_clients
        # The default matches BehaviourConfig.robots_horizon, the longest memory a window
        # needs: whether the client read robots.txt within the last hour.
        self._idle = idle_expiry

    def observe(self, key: str, signals: Signals, now: float, cfg: BehaviourConfig) -> Window:
        """Count one request of `key` and return its window (created when new)."""
        windows = self._windows
        window = windows.get(key)
        if window is not None:
            # No expiry here: the table only grows on insert, so that is where it sheds.
            record(window, signals, now, cfg)
            windows.move_to_end(key)
            return window
        window = record(None, signals, now, cfg)
        self._insert(key, window, now)
        return window

    def note_refusal(self, key: str, crawler: str, now: float) -> None:
        """Remember that `crawler` was refused for `key`, creating its window if it was evicted."""
        windows = self._windows
        window = windows.get(key)
        if window is None:
            window = Window(-1, now)
            note_refusal(window, crawler, now)
            self._insert(key, window, now)
            return
        note_refusal(window, crawler, now)
        windows.move_to_end(key)

    def get(self, key: str) -> Window | None:
        """The window of `key`, without counting a request or refreshing its recency."""
        return self._windows.get(key)

    def __len__(self) -> int:
        return len(self._windows)

    def _insert(self, key: str, window: Window, now: float) -> None:
        windows = self._windows
        windows[key] = window
        self._expire(now)
        if len(windows) > self._max:
            windows.popitem(last=False)

    def _expire(self, now: float) -> None:
        windows = self._windows
        horizon = now - self._idle
        for _ in range(_EXPIRE_PER_CALL):
            # OrderedDict iterates its own linked list: the oldest entry is O(1) to reach.
            oldest = next(iter(windows.values()))
            if oldest.last_seen >= horizon:
                return
            windows.popitem(last=False)
            if not windows:
                return
