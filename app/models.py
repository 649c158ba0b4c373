"""SQLAlchemy models mirroring schema.sql column for column (tests/test_models.py checks)."""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The key in a table's `info` under which its CHECK constraints are named.
CHECKS = "checks"


def _checks(*names: str) -> dict[str, Any]:
    """The table's CHECK constraints, by name only: schema.sql holds their rules and the
    database runs them; app.rules says which field each one is about. A second copy of their
    text here would be one nothing runs (tests/test_models.py compares the names)."""
    return {"info": {CHECKS: frozenset(names)}}


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    sku: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(asdecimal=True))
    quantity: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Last: added by guarded ALTERs (schema.sql), so they follow the columns of the first release.
    reorder_point: Mapped[int | None] = mapped_column(Integer)
    # Totals over the locations, written only by the ledger's triggers (schema.sql).
    reserved: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    available: Mapped[int] = mapped_column(Integer, Computed("quantity - reserved", persisted=True))

    __table_args__ = (
        Index(
            "products_sku_lower_key",
            func.lower(sku),
            unique=True,
            postgresql_ops={"lower(sku)": "text_pattern_ops"},
        ),
        Index("products_created_at_id_idx", created_at, id),
        Index(
            "products_name_trgm_idx",
            func.lower(name),
            postgresql_using="gin",
            postgresql_ops={"lower(name)": "gin_trgm_ops"},
        ),
        Index(
            "products_sku_trgm_idx",
            func.lower(sku),
            postgresql_using="gin",
            postgresql_ops={"lower(sku)": "gin_trgm_ops"},
        ),
        Index("products_quantity_idx", quantity),
        Index(
            "products_low_stock_idx",
            created_at,
            id,
            postgresql_where=text("available <= reorder_point"),
        ),
        _checks(
            "products_sku_format_check",
            "products_name_check",
            "products_description_length_check",
            "products_price_check",
            "products_quantity_check",
            "products_reorder_point_check",
            "products_reserved_check",
        ),
    )


class StockMovement(Base):
    __tablename__ = "stock_movements"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # No foreign key: movements outlive their product (the ledger's trigger checks new ones).
    product_id: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    quantity_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The code of the location, as it was (added by a guarded ALTER, so last).
    location: Mapped[str] = mapped_column(Text, server_default=text("'MAIN'"))

    __table_args__ = (
        Index("stock_movements_product_id_id_idx", product_id, id),
        Index("stock_movements_created_at_idx", created_at, postgresql_include=["reason", "delta"]),
        _checks(
            "stock_movements_delta_check",
            "stock_movements_reason_check",
            "stock_movements_note_length_check",
            "stock_movements_quantity_after_check",
        ),
    )


class Location(Base):
    __tablename__ = "locations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index(
            "locations_code_lower_key",
            func.lower(code),
            unique=True,
            postgresql_ops={"lower(code)": "text_pattern_ops"},
        ),
        Index("locations_created_at_id_idx", created_at, id),
        _checks("locations_code_format_check", "locations_name_check"),
    )


# MAIN, created by schema.sql in every database: where stock is when nobody names a location.
MAIN_LOCATION_ID, MAIN_LOCATION = 0, "MAIN"


class ProductStock(Base):
    """Units on hand and reserved per product and location, written only by the ledger."""

    __tablename__ = "product_stock"

    product_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    location_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("locations.id", ondelete="CASCADE"), primary_key=True
    )
    quantity: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reserved: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    available: Mapped[int] = mapped_column(Integer, Computed("quantity - reserved", persisted=True))

    __table_args__ = (
        Index("product_stock_location_id_product_id_idx", location_id, product_id),
        _checks("product_stock_reserved_check"),
    )


class StockTransfer(Base):
    """POST /transfers: stock moved between two locations (two movements, reason transfer)."""

    __tablename__ = "stock_transfers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger)
    sku: Mapped[str] = mapped_column(Text)
    from_location: Mapped[str] = mapped_column(Text)
    to_location: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        _checks(
            "stock_transfers_quantity_check",
            "stock_transfers_note_length_check",
            "stock_transfers_locations_check",
        ),
    )


class Reservation(Base):
    """Units held for an order until fulfilled, released or expired (schema.sql)."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    reference: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index(
            "reservations_expires_at_idx", expires_at, postgresql_where=text("status = 'active'")
        ),
        Index("reservations_reference_idx", reference, id),
        _checks("reservations_reference_check", "reservations_status_check"),
    )


class ReservationLine(Base):
    __tablename__ = "reservation_lines"

    reservation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("reservations.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger)
    sku: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("reservation_lines_product_id_idx", product_id, reservation_id),
        _checks("reservation_lines_quantity_check"),
    )


class ReservationAllocation(Base):
    __tablename__ = "reservation_allocations"

    reservation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger)
    location_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    location: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        ForeignKeyConstraint(
            ["reservation_id", "line"],
            ["reservation_lines.reservation_id", "reservation_lines.line"],
            name="reservation_allocations_line_fkey",
            ondelete="CASCADE",
        ),
        _checks("reservation_allocations_quantity_check"),
    )


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[int | None] = mapped_column(SmallInteger)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("idempotency_keys_created_at_idx", created_at),
        _checks(
            "idempotency_keys_scope_check",
            "idempotency_keys_key_check",
            "idempotency_keys_status_check",
        ),
    )


class ProductChangeEvent(Base):
    """The change log's events, written only by schema.sql's triggers, never updated."""

    __tablename__ = "product_change_events"

    stmt: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    k: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    product_id: Mapped[int] = mapped_column(BigInteger)
    product: Mapped[dict[str, object]] = mapped_column(JSON)
    changed: Mapped[list[str]] = mapped_column(ARRAY(Text))
    movement_id: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("product_change_events_statement_idx", stmt, postgresql_where=text("k = 1")),
        _checks(
            "product_change_events_type_check",
        ),
    )


class ProductChangeBatch(Base):
    """A numbered statement: its events are seq last_seq - events + 1 .. last_seq."""

    __tablename__ = "product_change_batches"

    last_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stmt: Mapped[int] = mapped_column(BigInteger)
    events: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("stmt", name="product_change_batches_stmt_key"),
        _checks(
            "product_change_batches_events_check",
        ),
    )


class ProductChangesSequencer(Base):
    """Where the sequencer stands: statement numbers up to high looked at, holes below it."""

    __tablename__ = "product_changes_sequencer"

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    high: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    holes: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))
    holes_until: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))

    __table_args__ = (
        _checks(
            "product_changes_sequencer_one_check",
            "product_changes_sequencer_holes_check",
        ),
    )


class ProductChangesPurged(Base):
    """Retention's mark: every event with seq <= through is gone, every later one kept; and
    the owner's floor of retention."""

    __tablename__ = "product_changes_purged"

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    through: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    retention_days: Mapped[int] = mapped_column(Integer, server_default=text("30"))

    __table_args__ = (
        _checks(
            "product_changes_purged_one_check",
            "product_changes_purged_retention_days_check",
        ),
    )


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    description: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Added after the first release (guarded ALTERs), so they follow its columns.
    after: Mapped[int] = mapped_column(BigInteger, server_default=func.product_changes_last_seq())
    lease_token: Mapped[UUID | None] = mapped_column(Uuid)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    served_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        _checks(
            "webhooks_url_check",
            "webhooks_events_check",
            "webhooks_description_check",
            "webhooks_secret_check",
        ),
    )


class WebhookRetry(Base):
    """A delivery that failed and is tried again, until give_up_at."""

    __tablename__ = "webhook_retries"

    webhook_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("webhooks.id", ondelete="CASCADE", name="webhook_retries_webhook_id_fkey"),
        primary_key=True,
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    give_up_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("webhook_retries_webhook_id_next_attempt_at_idx", webhook_id, next_attempt_at),
        Index("webhook_retries_next_attempt_at_idx", next_attempt_at),
        Index("webhook_retries_seq_idx", seq),
        _checks(
            "webhook_retries_attempts_check",
        ),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("webhooks.id", ondelete="CASCADE", name="webhook_attempts_webhook_id_fkey"),
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint(
            "seq", "webhook_id", "attempt", name="webhook_attempts_seq_webhook_id_attempt_key"
        ),
        Index("webhook_attempts_webhook_id_id_idx", webhook_id, id),
        _checks(
            "webhook_attempts_attempt_check",
            "webhook_attempts_outcome_check",
            "webhook_attempts_status_code_check",
            "webhook_attempts_error_check",
            "webhook_attempts_duration_ms_check",
        ),
    )


# The report views of schema.sql, described so that statements can be built on them. Their
# own MetaData: they are not tables, and nothing may ever try to create them.
views = MetaData()

stock_summary = Table(
    "stock_summary",
    views,
    Column("products", BigInteger),
    Column("units", Numeric),
    Column("reserved", Numeric),
    Column("value", Numeric),
    Column("out_of_stock", BigInteger),
    Column("low_stock", BigInteger),
    Column("as_of", DateTime(timezone=True)),
)

# Also the result of the function movement_daily(from_at, to_at), the view over a range.
movement_daily = Table(
    "movement_daily",
    views,
    Column("day", Date),
    Column("reason", Text),
    Column("movements", BigInteger),
    Column("units", Numeric),
)
