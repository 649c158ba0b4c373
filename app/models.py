"""SQLAlchemy models mirroring schema.sql column for column (tests/test_drift.py checks)."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    func,
    text,
)
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
        Index(
            "products_sku_lower_key",
            func.lower(sku),
            unique=True,
            postgresql_ops={"lower(sku)": "text_pattern_ops"},
        ),
        Index("products_created_at_id_idx", created_at, id),
    )
