"""/webhooks: subscriptions to the change log, and what was delivered to them.

Every request here, reads included, needs a read-write token (docs/api.md): the list shows
where the inventory's events go, and a subscription's log shows what its receiver said.
"""

import base64
import secrets

from fastapi import APIRouter, Depends, Request, Response

from app.core.errors import ValidationFailed, WebhookNotFound
from app.core.http.formats import json_array
from app.core.http.limits import JsonRoute
from app.core.http.pagination import (
    After,
    Limit,
    decode_cursor,
    encode_cursor,
    page_response,
)
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    ResolverDep,
    SettingsDep,
    WebhookId,
    require_writer,
)
from app.webhooks import queries as webhooks
from app.webhooks import ssrf
from app.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead

router = APIRouter(
    prefix="/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(require_writer)],
    responses=problems(503),
    route_class=JsonRoute,
)

# Bytes of randomness in a secret (Standard Webhooks: 24 to 64).
SECRET_BYTES = 32
DELIVERIES_PAGE = 100


def _json(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


@router.post(
    "",
    operation_id="createWebhook",
    status_code=201,
    response_model=WebhookCreated,
    responses=problems(409, 422),
    summary="Subscribe a URL to change events; the answer shows the signing secret, once",
)
async def create_webhook(
    body: WebhookCreate,
    db: DatabaseDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    credential: Credential,
    resolver: ResolverDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    try:
        await ssrf.resolve(
            body.url, allow_private=settings.webhook_allow_private, resolver=resolver
        )
    except ssrf.AddressRefused as exc:
        raise ValidationFailed.field("url", str(exc), "Webhooks cannot be sent there.") from None
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()

    async def operation(conn: Connection) -> Response:
        webhook_id, webhook = await webhooks.create_webhook(
            conn, url=body.url, events=body.events, description=body.description, secret=secret
        )
        return _json(
            webhooks.with_secret(webhook, secret), 201, {"Location": f"/webhooks/{webhook_id}"}
        )

    return await idempotency.run(
        operation,
        key=idempotency_key,
        credential=credential,
        scope="POST /webhooks",
        request=(body,),
    )


@router.get(
    "",
    operation_id="listWebhooks",
    response_model=list[WebhookRead],
    responses=problems(422),
    summary="Every subscription (no secrets)",
)
async def list_webhooks(db: DatabaseDep) -> Response:
    return _json(json_array(await webhooks.list_webhooks(db)))


@router.get(
    "/{id}",
    operation_id="getWebhook",
    response_model=WebhookRead,
    responses=problems(404, 422),
    summary="One subscription (no secret)",
)
async def get_webhook(webhook_id: WebhookId, db: DatabaseDep) -> Response:
    webhook = await webhooks.get_webhook(db, webhook_id=webhook_id)
    if webhook is None:
        raise WebhookNotFound(webhook_id)
    return _json(webhook)


@router.delete(
    "/{id}",
    operation_id="deleteWebhook",
    status_code=204,
    responses=problems(404, 422),
    summary="Unsubscribe: pending deliveries and the delivery log go with it",
)
async def delete_webhook(webhook_id: WebhookId, db: DatabaseDep) -> Response:
    if not await webhooks.delete_webhook(db, webhook_id=webhook_id):
        raise WebhookNotFound(webhook_id)
    return Response(status_code=204)


@router.get(
    "/{id}/deliveries",
    operation_id="listDeliveries",
    response_model=list[DeliveryRead],
    responses=problems(404, 422),
    summary="Delivery attempts, newest first; with limit, pages linked by Link",
)
async def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    db: DatabaseDep,
    limit: Limit = None,
    after: After = None,
) -> Response:
    before = decode_cursor(after, int)[0] if after is not None else None
    page = await webhooks.attempts_page(
        db, webhook_id=webhook_id, before=before, limit=limit or DELIVERIES_PAGE
    )
    if page is None:
        raise WebhookNotFound(webhook_id)
    rows, last = page
    return page_response(request, rows, None if last is None else encode_cursor(last))
