-- The inventory schema: the single source of truth for the rules every client obeys.
--
-- Apply with `psql -v ON_ERROR_STOP=1 -f schema.sql` as the owning superuser. Idempotent:
-- every statement creates what is missing and leaves what exists alone, so applying it to
-- a live database adds new objects without touching rows. A rule that changes later is
-- changed here with a guarded ALTER, never by recreating a table.

SET client_min_messages = warning;

-- The service's privileges live on a NOLOGIN group role; db/roles.sql creates the login
-- role that is a member of it. Created here too so schema.sql applies to a brand-new
-- cluster where only the superuser exists.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'inventory_rw') THEN
        CREATE ROLE inventory_rw NOLOGIN;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS products (
    id          bigint      GENERATED ALWAYS AS IDENTITY
                            CONSTRAINT products_pkey PRIMARY KEY,
    sku         text        NOT NULL
                            CONSTRAINT products_sku_format_check
                            CHECK (char_length(sku) BETWEEN 1 AND 64
                                   AND sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$'),
    name        text        NOT NULL
                            CONSTRAINT products_name_check
                            CHECK (char_length(name) BETWEEN 1 AND 200
                                   AND name ~ '[^[:space:]]'),
    description text
                            CONSTRAINT products_description_length_check
                            CHECK (char_length(description) <= 2000),
    -- numeric without a typmod: numeric(12,2) would round 1.005 to 1.01 on the way in,
    -- and the contract says a value with more than 2 decimals is refused, never rounded.
    price       numeric     NOT NULL
                            CONSTRAINT products_price_check
                            CHECK (price >= 0 AND price <= 9999999999.99
                                   AND price = round(price, 2)),
    quantity    integer     NOT NULL DEFAULT 0
                            CONSTRAINT products_quantity_check
                            CHECK (quantity >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- SKUs are unique case-insensitively. text_pattern_ops lets the same index serve
-- equality lookups and `lower(sku) LIKE 'abc%'` prefix searches under any collation.
CREATE UNIQUE INDEX IF NOT EXISTS products_sku_lower_key
    ON products (lower(sku) text_pattern_ops);

-- The list order: oldest first, id breaking ties; also the keyset for pagination.
CREATE INDEX IF NOT EXISTS products_created_at_id_idx
    ON products (created_at, id);

-- updated_at moves on every change, whoever makes it (API, psql, a migration).
CREATE OR REPLACE FUNCTION products_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER products_touch_updated_at
    BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION products_touch_updated_at();

-- The API's representation of a product, built where the row is: the service streams
-- this text without turning rows into Python objects, and psql users get the same view.
-- A row cast to this type serialises compactly with field names (json_build_object would
-- put spaces around every colon) and keeps product_json a plain, inlinable expression.
DO $$
BEGIN
    IF to_regtype('product_api') IS NULL THEN
        CREATE TYPE product_api AS (
            id          bigint,
            sku         text,
            name        text,
            description text,
            price       text,
            quantity    integer,
            created_at  text,
            updated_at  text
        );
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION product_json(p products) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        p.id,
        p.sku,
        p.name,
        p.description,
        to_char(p.price, 'FM9999999990.00'),
        p.quantity,
        to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(p.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::product_api)
$$;

COMMENT ON TABLE products IS
    'Products of the inventory. Rules are CHECK constraints so every client obeys them.';
COMMENT ON COLUMN products.id IS 'Identity assigned by the database; never sent by clients.';
COMMENT ON COLUMN products.sku IS
    'Stock keeping unit: 1-64 of [A-Za-z0-9._-], starting alphanumeric; unique ignoring case '
    '(products_sku_lower_key), stored in the case first given.';
COMMENT ON COLUMN products.name IS 'Display name: 1-200 characters, not blank.';
COMMENT ON COLUMN products.description IS 'Optional free text, at most 2000 characters.';
COMMENT ON COLUMN products.price IS
    'Unit price, 0 to 9999999999.99 with at most 2 decimals; more decimals are refused, not rounded.';
COMMENT ON COLUMN products.quantity IS 'Units in stock, never negative.';
COMMENT ON COLUMN products.created_at IS 'When the row was inserted (set by the database).';
COMMENT ON COLUMN products.updated_at IS
    'When the row last changed (maintained by trigger products_touch_updated_at).';
COMMENT ON TYPE product_api IS 'The fields of a product as the API returns them (see product_json).';
COMMENT ON FUNCTION product_json(products) IS
    'The API representation of a product: price with 2 decimals, RFC 3339 UTC timestamps.';

-- The service reads and writes rows; it never changes the schema.
GRANT USAGE ON SCHEMA public TO inventory_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON products TO inventory_rw;
GRANT USAGE ON TYPE product_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_json(products) TO inventory_rw;
