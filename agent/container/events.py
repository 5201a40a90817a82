"""What intake tells the runners: a job's state change, once the queue has committed it.

Its own module, free of docker-py and the secrets store, so the webhook intake imports only
this of the container package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """A job state change intake has committed to the queue, for the runners to follow."""

    job_id: int
    action: Literal["in_progress", "completed"]
    runner_name: str | None
    conclusion: str | None = None
