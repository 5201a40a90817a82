"""The App's webhook deliveries API (docs/github.md §1.4), for gantryd's missed-delivery recovery.

    GET  /app/hook/deliveries[?per_page=&cursor=]        -> 200 [hook-delivery-item], newest first
    GET  /app/hook/deliveries/{delivery_id}              -> 200 item + request/response
    POST /app/hook/deliveries/{delivery_id}/attempts     -> 202, the same bytes and GUID again

All three authenticate as the App (JWT). Pagination is by cursor, announced in the ``Link``
header as GitHub does ("Refer to the link header for the next and previous page cursors"); the
cursor is opaque to clients, here the id of the last item shown. Only the App's own hook is
listed: repository and organization hooks have their own routes, which gantryd does not use.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from agent.emulator import errors
from agent.emulator.asgi import Request, Response, Route, route
from agent.emulator.models import iso8601
from agent.emulator.rest import MAX_PER_PAGE, _int, _jwt
from agent.emulator.state import Emulator
from agent.emulator.webhooks import Delivery

_DOCS = "https://docs.github.com/rest/apps/webhooks"
DEFAULT_PER_PAGE = 30
CURSOR_PREFIX = "v1_"


def item_json(delivery: Delivery) -> dict[str, Any]:
    """Schema ``hook-delivery-item`` (§1.4)."""
    out = delivery.outgoing
    return {
        "id": delivery.id,
        "guid": out.guid,
        "delivered_at": iso8601(delivery.delivered_at),
        "redelivery": delivery.redelivery,
        "duration": round(delivery.duration or 0.0, 3),
        "status": delivery.status,
        "status_code": delivery.status_code,
        "event": out.event,
        "action": out.action,
        "installation_id": out.installation_id,
        "repository_id": out.repository_id,
        "throttled_at": None,
    }


def _cursor(request: Request, docs: str) -> int | None:
    value = request.query_value("cursor")
    if value is None or value == "":
        return None
    if not value.startswith(CURSOR_PREFIX) or not value[len(CURSOR_PREFIX) :].isdigit():
        raise errors.invalid_request(f"cursor {value!r} is not valid.", docs)
    return int(value[len(CURSOR_PREFIX) :])


def build_routes(emulator: Emulator) -> list[Route]:
    def find(delivery_id: str, docs: str) -> Delivery:
        wanted = _int(delivery_id, docs)
        found = next((d for d in emulator.app_deliveries() if d.id == wanted), None)
        if found is None:
            raise errors.not_found(docs)
        return found

    async def list_deliveries(request: Request) -> Response:
        docs = f"{_DOCS}#list-deliveries-for-an-app-webhook"
        emulator.authenticate_app(_jwt(request))
        emulator.maybe_fail()
        text = request.query_value("per_page") or ""
        per_page = (
            min(int(text), MAX_PER_PAGE) if text.isdigit() and int(text) else DEFAULT_PER_PAGE
        )
        before = _cursor(request, docs)
        newest_first = [
            d
            for d in reversed(emulator.app_deliveries())
            if d.status != "pending" and (before is None or d.id < before)
        ]
        page = newest_first[:per_page]
        headers: dict[str, str] = {}
        if len(newest_first) > per_page:
            query = urlencode({"per_page": per_page, "cursor": f"{CURSOR_PREFIX}{page[-1].id}"})
            headers["Link"] = f'<{emulator.base_url}{request.path}?{query}>; rel="next"'
        return Response.json(200, [item_json(d) for d in page], headers)

    async def get_delivery(request: Request, delivery_id: str) -> Response:
        docs = f"{_DOCS}#get-a-delivery-for-an-app-webhook"
        emulator.authenticate_app(_jwt(request))
        emulator.maybe_fail()
        delivery = find(delivery_id, docs)
        body = item_json(delivery)
        body["request"] = {
            "headers": dict(delivery.outgoing.headers),
            "payload": delivery.outgoing.body.decode("utf-8", "replace"),
        }
        body["response"] = {"headers": {}, "payload": None}
        return Response.json(200, body)

    async def redeliver(request: Request, delivery_id: str) -> Response:
        docs = f"{_DOCS}#redeliver-a-delivery-for-an-app-webhook"
        emulator.authenticate_app(_jwt(request))
        emulator.maybe_fail()
        emulator.redeliver(find(delivery_id, docs))
        return Response(status=202)

    return [
        route("GET", "/app/hook/deliveries", list_deliveries),
        route("GET", "/app/hook/deliveries/{delivery_id}", get_delivery),
        route("POST", "/app/hook/deliveries/{delivery_id}/attempts", redeliver),
    ]
