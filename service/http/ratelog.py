"""Warnings for rejected requests, rate-limited: a flood of bad requests must not become a flood of log lines.

One line per reason per `interval_s`; the lines suppressed in between are counted and reported with the next
one ("... (37 more since the last warning)"). The counts in `omr_rejections_total` stay exact.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("service.rejected")


class RateLimitedLog:
    def __init__(self, logger: logging.Logger = log, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, reason: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `reason` was logged within the interval; True when a line was written."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval_s:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return False
            self._last[reason] = now
            skipped = self._suppressed.pop(reason, 0)
        if skipped:
            self._log.warning(message + " (%d more since the last warning)", *args, skipped)
        else:
            self._log.warning(message, *args)
        return True


#: the process-wide limiter every transport shares (rejections are per process, like the log)
rejected = RateLimitedLog()
