"""SQLAlchemy models mirroring schema.sql column for column (tests/test_models.py checks)."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    # Last: added by a guarded ALTER (schema.sql), so it follows the columns of the first release.
    reorder_point: Mapped[int | None] = mapped_column(Integer)

    # Same expressions and names as schema.sql; the names are what the API maps to fields.
    __table_args__ = (
        CheckConstraint(
            "char_length(sku) BETWEEN 1 AND 64 AND sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$'",
            name="products_sku_format_check",
        ),
        CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200 AND name ~ '[^[:space:]]'",
            name="products_name_check",
        ),
        CheckConstraint(
            "char_length(description) <= 2000", name="products_description_length_check"
        ),
        CheckConstraint(
            "price >= 0 AND price <= 9999999999.99 AND price = round(price, 2)",
            name="products_price_check",
        ),
        CheckConstraint("quantity >= 0", name="products_quantity_check"),
        CheckConstraint("reorder_point >= 0", name="products_reorder_point_check"),
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
            postgresql_where=text("quantity <= reorder_point"),
        ),
    )


class StockMovement(Base):
    __tablename__ = "stock_movements"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    product_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("products.id", ondelete="CASCADE", name="stock_movements_product_id_fkey"),
    )
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    quantity_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("delta <> 0", name="stock_movements_delta_check"),
        CheckConstraint(
            "reason IN ('received', 'sold', 'returned', 'damaged', 'correction')",
            name="stock_movements_reason_check",
        ),
        CheckConstraint("char_length(note) <= 500", name="stock_movements_note_length_check"),
        CheckConstraint("quantity_after >= 0", name="stock_movements_quantity_after_check"),
        Index("stock_movements_product_id_id_idx", product_id, id),
        Index("stock_movements_created_at_idx", created_at, postgresql_include=["reason", "delta"]),
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
        CheckConstraint(
            "char_length(scope) BETWEEN 1 AND 200", name="idempotency_keys_scope_check"
        ),
        CheckConstraint("key ~ '^[\\x20-\\x7e]{1,255}$'", name="idempotency_keys_key_check"),
        CheckConstraint("status BETWEEN 100 AND 599", name="idempotency_keys_status_check"),
        Index("idempotency_keys_created_at_idx", created_at),
    )


# The report views of schema.sql, described so that statements can be built on them. Their
# own MetaData: they are not tables, and nothing may ever try to create them.
views = MetaData()

stock_summary = Table(
    "stock_summary",
    views,
    Column("products", BigInteger),
    Column("units", Numeric),
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
