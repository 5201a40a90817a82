"""The ``/secrets`` endpoints run on a ``SecretStore``: by the admin server while gantryd runs (it
holds the database), and by the CLI on the store itself when gantryd is stopped, so both paths
give the same answers and audit entries."""

from __future__ import annotations

from agent.ops.protocol import (
    AdminError,
    AuditList,
    AuditRecord,
    KeyRotated,
    SecretList,
    SecretRemoved,
    SecretsAnswer,
    SecretStored,
    SecretSummary,
)
from agent.secrets import SecretStore


async def answer_secrets(
    store: SecretStore,
    method: str,
    rest: list[str],
    query: dict[str, str],
    body: bytes,
    *,
    actor: str,
) -> SecretsAnswer:
    """One ``/secrets/<rest>`` request; ``actor`` is who the audit log names."""
    match method, rest:
        case "GET", []:
            entries = await store.entries()
            return SecretList(
                secrets=tuple(
                    SecretSummary(name=i.name, created_at=i.created_at, updated_at=i.updated_at)
                    for i in entries
                )
            )
        case "PUT", [name]:
            await store.set(name, body, actor=actor)
            return SecretStored(set=name)
        case "DELETE", [name]:
            if not await store.remove(name, actor=actor):
                raise AdminError(404, f"secret {name} is not in the store")
            return SecretRemoved(removed=name)
        case "POST", ["rotate-key"]:
            return KeyRotated(rotated=await store.rotate_key(actor=actor))
        case "GET", ["audit"]:
            limit = int(query["limit"]) if query.get("limit", "").isdigit() else 100
            audit = await store.audit(secret=query.get("secret"), limit=limit)
            return AuditList(
                audit=tuple(
                    AuditRecord(
                        at=e.at,
                        secret=e.secret,
                        action=e.action,
                        runner=e.runner,
                        job=e.job,
                        actor=e.actor,
                    )
                    for e in audit
                )
            )
    raise AdminError(404, f"no such admin endpoint: {method} /secrets/{'/'.join(rest)}")
