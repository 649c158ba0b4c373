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

-- reorder_point came after the first release. Added, never recreated: an existing table
-- keeps its rows, and every database has the same column order (the new column is last).
-- The type bounds it above at 2147483647, as it does quantity.
ALTER TABLE products ADD COLUMN IF NOT EXISTS reorder_point integer;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'products'::regclass
                     AND conname = 'products_reorder_point_check') THEN
        ALTER TABLE products ADD CONSTRAINT products_reorder_point_check
            CHECK (reorder_point >= 0);
    END IF;
END
$$;

-- Search (GET /products?q=): a literal, case-insensitive substring of the name or the SKU,
-- asked as `lower(name) LIKE '%' || lower(:pattern) || '%'` (with %, _ and \ escaped), which
-- these trigram indexes answer by bitmap scan; the two are ORed. pg_trgm is a trusted
-- extension shipped with PostgreSQL; the superuser applying this file creates it.
-- A term without a trigram (under 3 characters) cannot use them; the API runs such a term
-- as strpos() so that no plan scans a whole GIN index.
-- On a large live table CREATE INDEX holds writes back while it builds: create these with
-- CREATE INDEX CONCURRENTLY under the same names first, and IF NOT EXISTS then skips them.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
CREATE INDEX IF NOT EXISTS products_name_trgm_idx
    ON products USING gin (lower(name) gin_trgm_ops);
CREATE INDEX IF NOT EXISTS products_sku_trgm_idx
    ON products USING gin (lower(sku) gin_trgm_ops);

-- quantity_max: few products at or below a small quantity, found without a scan.
CREATE INDEX IF NOT EXISTS products_quantity_idx
    ON products (quantity);

-- low_stock: only the products at or below their reorder point, already in list order. A
-- partial index is as small as the shortage; a NULL reorder point is never low, so never in it.
CREATE INDEX IF NOT EXISTS products_low_stock_idx
    ON products (created_at, id) WHERE quantity <= reorder_point;

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
--
-- The attributes are the API's fields in API order. A composite type can only grow at its
-- end, so a database whose product_api differs from this list (one from an earlier release)
-- gets the type dropped and created anew, with product_fields, which returns it; both are
-- created again right below. Nothing stores values of the type, so no data goes; DROP
-- without CASCADE fails loudly should anything else ever depend on it. One transaction with
-- the functions, so a live service never calls an old function against the new type.
BEGIN;

DO $$
DECLARE
    wanted CONSTANT text :=
        'id bigint, sku text, name text, description text, price text, quantity integer, '
        'reorder_point integer, created_at text, updated_at text';
    stored text;
BEGIN
    SELECT string_agg(format('%s %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                      ORDER BY a.attnum)
      INTO stored
      FROM pg_type t
      JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE t.oid = to_regtype('product_api');
    IF stored IS DISTINCT FROM wanted THEN
        DROP FUNCTION IF EXISTS product_fields(products);
        DROP TYPE IF EXISTS product_api;
        EXECUTE format('CREATE TYPE product_api AS (%s)', wanted);
    END IF;
END
$$;

-- The one place a product's fields are formatted for clients: the JSON of product_json and
-- the columns of the CSV export both come from here.
CREATE OR REPLACE FUNCTION product_fields(p products) RETURNS product_api
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT ROW(
        p.id,
        p.sku,
        p.name,
        p.description,
        to_char(p.price, 'FM9999999990.00'),
        p.quantity,
        p.reorder_point,
        to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(p.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::product_api
$$;

CREATE OR REPLACE FUNCTION product_json(p products) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(product_fields(p))
$$;

COMMIT;

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
COMMENT ON COLUMN products.reorder_point IS
    'Optional: the product is low on stock when quantity <= reorder_point; NULL = never low.';
COMMENT ON COLUMN products.created_at IS 'When the row was inserted (set by the database).';
COMMENT ON COLUMN products.updated_at IS
    'When the row last changed (maintained by trigger products_touch_updated_at).';
COMMENT ON TYPE product_api IS 'The fields of a product as the API returns them (see product_json).';
COMMENT ON FUNCTION product_fields(products) IS
    'A product''s fields as the API shows them (price with 2 decimals, RFC 3339 UTC timestamps).';
COMMENT ON FUNCTION product_json(products) IS
    'The API representation of a product: price with 2 decimals, RFC 3339 UTC timestamps.';

-- The service reads and writes rows; it never changes the schema.
GRANT USAGE ON SCHEMA public TO inventory_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON products TO inventory_rw;
GRANT USAGE ON TYPE product_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_fields(products) TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_json(products) TO inventory_rw;

-- ---------------------------------------------------------------------------------------
-- ETags, the stock movement ledger and idempotency keys (PATCH/DELETE, adjustments).
-- ---------------------------------------------------------------------------------------

-- The ETag is a hash of the representation itself rather than a version column: it changes
-- whenever anything a client can see changes (stock included), whoever writes the row
-- (the API, psql, a migration), because product_json carries updated_at, which the trigger
-- moves on every UPDATE; and identical bytes give an identical tag, which is what a strong
-- validator means (RFC 9110 8.8.1). Computed here, so a conditional UPDATE can compare it
-- in its WHERE clause and the check and the write are one statement. md5 is no security
-- control here: whoever could craft two colliding product states could simply PATCH.
CREATE OR REPLACE FUNCTION product_etag(p products) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT '"' || md5(product_json(p)::text) || '"'
$$;

COMMENT ON FUNCTION product_etag(products) IS
    'The strong ETag of a product: a quoted md5 of product_json(p); changes with every change.';

-- The ledger: one row per stock adjustment, written by the same statement that changes
-- products.quantity. For any product, quantity = initial quantity + sum(delta), and
-- quantity_after is the quantity that adjustment left. Append-only for the service.
CREATE TABLE IF NOT EXISTS stock_movements (
    id             bigint      GENERATED ALWAYS AS IDENTITY
                               CONSTRAINT stock_movements_pkey PRIMARY KEY,
    product_id     bigint      NOT NULL
                               CONSTRAINT stock_movements_product_id_fkey
                               REFERENCES products (id) ON DELETE CASCADE,
    delta          integer     NOT NULL
                               CONSTRAINT stock_movements_delta_check CHECK (delta <> 0),
    -- A CHECKed set rather than an enum: adding a reason is one guarded ALTER of a named
    -- constraint, and the name is what the API maps to a field.
    reason         text        NOT NULL
                               CONSTRAINT stock_movements_reason_check
                               CHECK (reason IN ('received', 'sold', 'returned', 'damaged',
                                                 'correction')),
    note           text
                               CONSTRAINT stock_movements_note_length_check
                               CHECK (char_length(note) <= 500),
    quantity_after integer     NOT NULL
                               CONSTRAINT stock_movements_quantity_after_check
                               CHECK (quantity_after >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Per-product history in id order (the keyset of GET /products/{sku}/movements); also
-- serves the foreign key, so deleting a product finds its movements without a scan.
CREATE INDEX IF NOT EXISTS stock_movements_product_id_id_idx
    ON stock_movements (product_id, id);

DO $$
BEGIN
    IF to_regtype('movement_api') IS NULL THEN
        CREATE TYPE movement_api AS (
            id             bigint,
            delta          integer,
            reason         text,
            note           text,
            quantity_after integer,
            created_at     text
        );
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION movement_json(m stock_movements) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        m.id,
        m.delta,
        m.reason,
        m.note,
        m.quantity_after,
        to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::movement_api)
$$;

COMMENT ON TABLE stock_movements IS
    'Stock ledger: one row per adjustment; quantity = initial quantity + sum(delta) per product.';
COMMENT ON COLUMN stock_movements.id IS
    'Identity; per product, id order is commit order (assigned under the product''s row lock).';
COMMENT ON COLUMN stock_movements.product_id IS
    'The product; its movements are deleted with it (ON DELETE CASCADE).';
COMMENT ON COLUMN stock_movements.delta IS 'Units added (positive) or removed (negative); never 0.';
COMMENT ON COLUMN stock_movements.reason IS
    'Why: received, sold, returned, damaged or correction.';
COMMENT ON COLUMN stock_movements.note IS 'Optional free text, at most 500 characters.';
COMMENT ON COLUMN stock_movements.quantity_after IS 'The product''s quantity right after this movement.';
COMMENT ON COLUMN stock_movements.created_at IS 'When the movement was recorded (set by the database).';
COMMENT ON TYPE movement_api IS 'The fields of a movement as the API returns them (see movement_json).';
COMMENT ON FUNCTION movement_json(stock_movements) IS
    'The API representation of a stock movement, with an RFC 3339 UTC timestamp.';

-- Idempotency-Key: the first response to a (scope, key), written in the same transaction as
-- the work it describes, so a key is stored exactly when its effect is. Rows older than the
-- TTL (24 h) are ignored and purged in batches by the service (app/idempotency.py).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope          text        NOT NULL
                               CONSTRAINT idempotency_keys_scope_check
                               CHECK (char_length(scope) BETWEEN 1 AND 200),
    key            text        NOT NULL
                               CONSTRAINT idempotency_keys_key_check
                               CHECK (key ~ '^[\x20-\x7e]{1,255}$'),
    request_hash   bytea       NOT NULL,
    status         smallint
                               CONSTRAINT idempotency_keys_status_check
                               CHECK (status BETWEEN 100 AND 599),
    headers        jsonb,
    body           bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, key)
);

-- The purge deletes the oldest rows first, in batches.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx
    ON idempotency_keys (created_at);

COMMENT ON TABLE idempotency_keys IS
    'First responses to requests carrying an Idempotency-Key; kept 24 h, then purged.';
COMMENT ON COLUMN idempotency_keys.scope IS 'The operation: method and path template.';
COMMENT ON COLUMN idempotency_keys.key IS 'The client''s Idempotency-Key: 1-255 printable ASCII characters.';
COMMENT ON COLUMN idempotency_keys.request_hash IS
    'SHA-256 of the request (target and canonical body); another body with the key is refused.';
COMMENT ON COLUMN idempotency_keys.status IS
    'The response status; NULL only inside the transaction that is still doing the work.';
COMMENT ON COLUMN idempotency_keys.headers IS 'Response headers to replay (Content-Type, Location, ETag).';
COMMENT ON COLUMN idempotency_keys.body IS 'The response body, replayed byte for byte.';
COMMENT ON COLUMN idempotency_keys.created_at IS 'When the key was first used; it expires 24 h later.';

-- The ledger is append-only for the service: no UPDATE or DELETE on stock_movements (the
-- cascade from products runs with the owner's rights). Identity columns need no sequence grant.
GRANT SELECT, INSERT ON stock_movements TO inventory_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO inventory_rw;
GRANT USAGE ON TYPE movement_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_etag(products) TO inventory_rw;
GRANT EXECUTE ON FUNCTION movement_json(stock_movements) TO inventory_rw;

-- ---------------------------------------------------------------------------------------
-- Reports: the numbers GET /reports/stock and GET /reports/movements serve, defined here so
-- that psql users, BI tools and the API read the same definitions and never disagree.
-- ---------------------------------------------------------------------------------------

-- A month of the ledger without reading all of it: the range scan behind movement_daily(from, to).
-- Covering (reason, delta), so the report reads the index alone: on 10M movements a month took
-- 0.4 s instead of 1.0 s, for an index 1.8 times the size of a plain one.
CREATE INDEX IF NOT EXISTS stock_movements_created_at_idx
    ON stock_movements (created_at) INCLUDE (reason, delta);

-- Exact numbers: units is summed as bigint (sum() of bigint is numeric, so no overflow at any
-- row count), value is numeric times integer summed as numeric (never a float), shown with
-- exactly 2 decimals (every price has at most 2, so round() only sets the scale).
CREATE OR REPLACE VIEW stock_summary AS
SELECT count(*)                                          AS products,
       coalesce(sum(quantity::bigint), 0)                AS units,
       round(coalesce(sum(price * quantity), 0), 2)      AS value,
       count(*) FILTER (WHERE quantity = 0)              AS out_of_stock,
       count(*) FILTER (WHERE quantity <= reorder_point) AS low_stock,
       statement_timestamp()                             AS as_of
FROM products;

COMMENT ON VIEW stock_summary IS
    'The stock at a glance, one row from one snapshot (GET /reports/stock).';
COMMENT ON COLUMN stock_summary.products IS 'Number of products.';
COMMENT ON COLUMN stock_summary.units IS 'Sum of quantities.';
COMMENT ON COLUMN stock_summary.value IS 'Sum of price * quantity, exact, 2 decimals.';
COMMENT ON COLUMN stock_summary.out_of_stock IS 'Products with quantity 0.';
COMMENT ON COLUMN stock_summary.low_stock IS
    'Products with quantity <= reorder_point (a NULL reorder point is never low).';
COMMENT ON COLUMN stock_summary.as_of IS
    'When the statement started: under READ COMMITTED, the moment the numbers describe.';

-- The ledger per UTC day and reason, for [from_at, to_at). One definition for both: the view
-- below is this over all time, and the API asks this for its range (its `from` and `to` need
-- not fall on midnight), which the created_at index answers. SQL, STABLE and not STRICT, so the
-- planner inlines it. Movements count whether or not their product still exists.
CREATE OR REPLACE FUNCTION movement_daily(from_at timestamptz, to_at timestamptz)
    RETURNS TABLE (day date, reason text, movements bigint, units numeric)
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT (m.created_at AT TIME ZONE 'UTC')::date, m.reason, count(*), sum(m.delta::bigint)
    FROM stock_movements m
    WHERE m.created_at >= from_at AND m.created_at < to_at
    GROUP BY 1, 2
$$;

CREATE OR REPLACE VIEW movement_daily AS
SELECT day, reason, movements, units
FROM movement_daily('-infinity', 'infinity');

COMMENT ON FUNCTION movement_daily(timestamptz, timestamptz) IS
    'movement_daily for movements made in [from_at, to_at): uses stock_movements_created_at_idx, '
    'so prefer it to filtering the view by day, which reads the whole ledger.';
COMMENT ON VIEW movement_daily IS
    'Stock movements per UTC day and reason, all time (GET /reports/movements sums it by day, '
    'week or month). For a range: SELECT * FROM movement_daily(''2026-11-01'', ''2026-12-01'').';
COMMENT ON COLUMN movement_daily.day IS 'The UTC day the movements were recorded.';
COMMENT ON COLUMN movement_daily.reason IS 'received, sold, returned, damaged or correction.';
COMMENT ON COLUMN movement_daily.movements IS 'Number of movements.';
COMMENT ON COLUMN movement_daily.units IS 'Sum of their deltas (negative: stock went out).';

GRANT SELECT ON stock_summary, movement_daily TO inventory_rw;
GRANT EXECUTE ON FUNCTION movement_daily(timestamptz, timestamptz) TO inventory_rw;

-- Analysts and BI tools: a read-only group role. Nobody logs in as it; give it to a person:
--   CREATE ROLE alice LOGIN PASSWORD '...';
--   GRANT inventory_reader TO alice;
-- It reads products, the ledger and the reports; not idempotency_keys (stored responses of
-- other clients). Settings such as statement_timeout go on the person's role (ALTER ROLE
-- alice SET ...): a group role's settings do not reach its members.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'inventory_reader') THEN
        CREATE ROLE inventory_reader NOLOGIN;
    END IF;
EXCEPTION
    -- Roles are cluster-wide: another database's schema.sql may create it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

COMMENT ON ROLE inventory_reader IS
    'Read-only access to the inventory (products, stock_movements, stock_summary, '
    'movement_daily) for psql users and BI tools: GRANT inventory_reader TO <login role>.';

GRANT USAGE ON SCHEMA public TO inventory_reader;
GRANT SELECT ON products, stock_movements, stock_summary, movement_daily TO inventory_reader;
GRANT EXECUTE ON FUNCTION product_json(products), product_etag(products),
    movement_json(stock_movements), movement_daily(timestamptz, timestamptz) TO inventory_reader;
