"""Standard Webhooks signatures: what a receiver verifies a delivery with."""

from datetime import datetime

from standardwebhooks import Webhook


def signed_headers(secret: str, seq: int, event: str, now: datetime) -> dict[str, str]:
    """The headers webhook-id (the event's seq), webhook-timestamp and webhook-signature."""
    signature = Webhook(secret).sign(msg_id=str(seq), timestamp=now, data=event)
    return {
        "webhook-id": str(seq),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
