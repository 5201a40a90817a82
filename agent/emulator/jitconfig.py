"""The ``encoded_jit_config`` the emulator hands out, in the real runner's format.

docs/github.md §8.2: the value is base64 of a JSON object ``{file name: base64(file content)}`` that
the runner writes into its root: ``.runner`` (agent id and name, pool, server URL, work folder),
``.credentials`` and ``.credentials_rsaparams``. The real ``.credentials`` names an OAuth client
whose key is in ``.credentials_rsaparams``; the stand-in runner authenticates with a per-runner
secret in ``.credentials`` ``data.token`` instead, and the RSA parameters are random filler with
the real field names (a real key pair per runner would cost tens of milliseconds for nothing).
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

_RSA_FIELDS = ("d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q")


def _b64_json(value: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def encode_jit_config(
    *,
    runner_id: int,
    runner_name: str,
    pool_id: int,
    pool_name: str,
    server_url: str,
    github_url: str,
    work_folder: str,
    secret: str,
) -> str:
    files = {
        ".runner": _b64_json(
            {
                "agentId": runner_id,
                "agentName": runner_name,
                "poolId": pool_id,
                "poolName": pool_name,
                "serverUrl": server_url,
                "gitHubUrl": github_url,
                "workFolder": work_folder,
                "ephemeral": True,
            }
        ),
        ".credentials": _b64_json({"scheme": "OAuth", "data": {"token": secret}}),
        ".credentials_rsaparams": _b64_json(
            {name: base64.b64encode(secrets.token_bytes(32)).decode() for name in _RSA_FIELDS}
        ),
    }
    return _b64_json(files)
