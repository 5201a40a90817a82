"""The GitHub stand-in's wall clock for tests: real time plus an offset a test moves on.

Real time, so JWTs made the way gantryd makes them (from time.time()) line up with GitHub's
"now"; an offset, so tokens can expire without waiting. Both `clock.offset += s` and
`clock.now = t` move it.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    @property
    def now(self) -> float:
        return time.time() + self.offset

    @now.setter
    def now(self, value: float) -> None:
        self.offset = value - time.time()

    def __call__(self) -> float:
        return self.now
