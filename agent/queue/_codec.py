"""JobSpec <-> JSON, shared by the backends so both store the same bytes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agent.queue.base import JobSpec

_FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))


def dump_spec(spec: JobSpec) -> str:
    # Not dataclasses.asdict: its deep copy costs a quarter of an enqueue.
    return json.dumps({name: getattr(spec, name) for name in _FIELDS}, separators=(",", ":"))


def load_spec(text: str) -> JobSpec:
    fields: dict[str, Any] = json.loads(text)
    fields["labels"] = tuple(fields["labels"])
    return JobSpec(**fields)


def tombstone_spec(job_id: int) -> JobSpec:
    """The spec stored for a job known only from its ``completed`` delivery."""
    return JobSpec(
        job_id=job_id,
        run_id=0,
        run_attempt=0,
        repository="",
        installation_id=None,
        labels=(),
        pool="",
    )
