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

-- What each rule guards, for psql users (\dd products*, \di+ products*): every constraint
-- and index carries a comment (tests/test_schema.py).
COMMENT ON CONSTRAINT products_pkey ON products IS
    'One row per id, assigned by the database; the ledger and the change log refer to it.';
COMMENT ON CONSTRAINT products_sku_format_check ON products IS
    'SKU: 1-64 characters, a letter or digit first, then letters, digits, ".", "_" or "-".';
COMMENT ON CONSTRAINT products_name_check ON products IS
    'Name: 1-200 characters, not blank or whitespace only.';
COMMENT ON CONSTRAINT products_description_length_check ON products IS
    'Description: at most 2000 characters (NULL: none).';
COMMENT ON CONSTRAINT products_price_check ON products IS
    'Price: 0 to 9999999999.99 with at most 2 decimals; a value with more is refused, never rounded.';
COMMENT ON CONSTRAINT products_quantity_check ON products IS
    'Stock on hand is never negative, whoever writes the row (the API answers 409 insufficient_stock first).';
COMMENT ON CONSTRAINT products_reorder_point_check ON products IS
    'Reorder point: not negative (NULL: the product is never low on stock).';
COMMENT ON INDEX products_pkey IS 'The index of products_pkey: a product by id.';
COMMENT ON INDEX products_sku_lower_key IS
    'SKUs are unique ignoring case (abc-1 and ABC-1 are one SKU: 409 duplicate_sku); '
    'text_pattern_ops also serves lookups by SKU and sku_prefix searches.';
COMMENT ON INDEX products_created_at_id_idx IS
    'The list order of GET /products (oldest first, id breaking ties) and the keyset of its pages.';
COMMENT ON INDEX products_name_trgm_idx IS
    'GET /products?q=: names containing a term of 3 or more characters, ignoring case (pg_trgm).';
COMMENT ON INDEX products_sku_trgm_idx IS
    'GET /products?q=: SKUs containing a term of 3 or more characters, ignoring case (pg_trgm).';
COMMENT ON INDEX products_quantity_idx IS
    'GET /products?quantity_max=: the products with at most that many in stock, without a scan.';
COMMENT ON INDEX products_low_stock_idx IS
    'GET /products?low_stock=true: only the products at or below their reorder point, in list order.';

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
    -- The product it moved. No foreign key: movements outlive their product (API.md, DELETE),
    -- and ids are never reused; the trigger stock_movements_product_exists checks new rows.
    product_id     bigint      NOT NULL,
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

-- Per-product history in id order (the keyset of GET /products/{sku}/movements).
CREATE INDEX IF NOT EXISTS stock_movements_product_id_id_idx
    ON stock_movements (product_id, id);

-- Upgrade: releases before the change log deleted a product's movements with it (ON DELETE
-- CASCADE). The ledger now keeps them, so the foreign key goes; the trigger below keeps its
-- other half, that a new movement names a product that exists.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint
               WHERE conrelid = 'stock_movements'::regclass
                 AND conname = 'stock_movements_product_id_fkey') THEN
        ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_product_id_fkey;
    END IF;
END
$$;

-- What the foreign key checked, as it did: after the row's own constraints, with the same
-- lock (KEY SHARE: a concurrent DELETE of the product waits for this transaction, and this
-- insert fails if the delete won).
CREATE OR REPLACE FUNCTION stock_movements_product_exists() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    PERFORM FROM products WHERE id = NEW.product_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'product % does not exist', NEW.product_id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'stock_movements',
                  COLUMN = 'product_id', CONSTRAINT = 'stock_movements_product_exists';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER stock_movements_product_exists
    AFTER INSERT OR UPDATE OF product_id ON stock_movements
    FOR EACH ROW EXECUTE FUNCTION stock_movements_product_exists();

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
    'The product moved (checked on insert); stays when the product is deleted: the stock moved.';
COMMENT ON COLUMN stock_movements.delta IS 'Units added (positive) or removed (negative); never 0.';
COMMENT ON COLUMN stock_movements.reason IS
    'Why: received, sold, returned, damaged or correction.';
COMMENT ON COLUMN stock_movements.note IS 'Optional free text, at most 500 characters.';
COMMENT ON COLUMN stock_movements.quantity_after IS 'The product''s quantity right after this movement.';
COMMENT ON COLUMN stock_movements.created_at IS 'When the movement was recorded (set by the database).';
COMMENT ON TYPE movement_api IS 'The fields of a movement as the API returns them (see movement_json).';
COMMENT ON FUNCTION movement_json(stock_movements) IS
    'The API representation of a stock movement, with an RFC 3339 UTC timestamp.';
COMMENT ON CONSTRAINT stock_movements_pkey ON stock_movements IS
    'One row per movement; per product, ids follow the order the movements were applied.';
COMMENT ON CONSTRAINT stock_movements_delta_check ON stock_movements IS
    'A movement moves stock: delta is never 0.';
COMMENT ON CONSTRAINT stock_movements_reason_check ON stock_movements IS
    'Reason: received, sold, returned, damaged or correction.';
COMMENT ON CONSTRAINT stock_movements_note_length_check ON stock_movements IS
    'Note: at most 500 characters (NULL: none).';
COMMENT ON CONSTRAINT stock_movements_quantity_after_check ON stock_movements IS
    'The quantity a movement leaves is never negative.';
COMMENT ON INDEX stock_movements_pkey IS 'The index of stock_movements_pkey: a movement by id.';
COMMENT ON INDEX stock_movements_product_id_id_idx IS
    'A product''s movements in id order: GET /products/{sku}/movements and the keyset of its pages.';

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
COMMENT ON CONSTRAINT idempotency_keys_pkey ON idempotency_keys IS
    'One stored response per operation and key: a repeat finds the first request''s answer, '
    'or waits on its row while it still runs; it never runs twice.';
COMMENT ON CONSTRAINT idempotency_keys_scope_check ON idempotency_keys IS
    'Scope (the operation): 1-200 characters.';
COMMENT ON CONSTRAINT idempotency_keys_key_check ON idempotency_keys IS
    'Idempotency-Key: 1-255 printable ASCII characters.';
COMMENT ON CONSTRAINT idempotency_keys_status_check ON idempotency_keys IS
    'A stored status is an HTTP status (100-599); NULL while the first request still runs.';
COMMENT ON INDEX idempotency_keys_pkey IS 'The index of idempotency_keys_pkey: a key by operation.';
COMMENT ON INDEX idempotency_keys_created_at_idx IS
    'The purge: expired keys, oldest first, in batches.';

-- The ledger is append-only for the service: no UPDATE or DELETE on stock_movements.
-- Identity columns need no sequence grant.
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
COMMENT ON INDEX stock_movements_created_at_idx IS
    'Movements by time, covering reason and delta: movement_daily(from, to) and GET '
    '/reports/movements read a range of the ledger from the index alone.';

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

-- ---------------------------------------------------------------------------------------
-- The change log (GET /changes, GET /changes/stream) and webhooks.
-- ---------------------------------------------------------------------------------------

-- One event per change of a product, written by triggers in the transaction that made the
-- change, whoever made it (the API, an import, psql). Events are inserted with seq NULL;
-- product_changes_sequence() numbers them once their transaction has committed, so a reader
-- following `seq > :after` can never pass an event that commits later (an id from a sequence
-- is taken at insert time, and a transaction that took id 10 may commit after one that took
-- id 11 was served). Per product, events are inserted under the product's row lock, so id
-- order is the order the changes were made, and the sequencer keeps it.
CREATE TABLE IF NOT EXISTS product_changes (
    id           bigint      GENERATED ALWAYS AS IDENTITY
                             CONSTRAINT product_changes_pkey PRIMARY KEY,
    seq          bigint,
    -- The writing transaction (pg_current_xact_id): a stock movement joins the event of its
    -- own transaction's product update.
    xact         bigint      NOT NULL,
    type         text        NOT NULL
                             CONSTRAINT product_changes_type_check
                             CHECK (type IN ('product.created', 'product.updated',
                                             'product.deleted')),
    product_id   bigint      NOT NULL,
    sku          text        NOT NULL,
    product      json        NOT NULL,
    -- NULL only while a movement waits for its product's update in the same transaction.
    changed      text[],
    movement     json,
    at           timestamptz NOT NULL DEFAULT now(),
    sequenced_at timestamptz,
    CONSTRAINT product_changes_sequenced_check CHECK ((seq IS NULL) = (sequenced_at IS NULL))
);

-- Readers: `WHERE seq > :after ORDER BY seq`. Partial, so unsequenced events cost no entry.
CREATE UNIQUE INDEX IF NOT EXISTS product_changes_seq_key
    ON product_changes (seq) WHERE seq IS NOT NULL;
-- The sequencer's work list, and the triggers' look-up of their own transaction's events.
-- Both stay small: an event leaves them when it is sequenced, a moment after its commit.
CREATE INDEX IF NOT EXISTS product_changes_unsequenced_idx
    ON product_changes (id) WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS product_changes_unsequenced_product_idx
    ON product_changes (product_id, id) WHERE seq IS NULL;

-- Retention removes the oldest events in seq order; every seq <= through is gone, every
-- seq > through is kept. One row.
CREATE TABLE IF NOT EXISTS product_changes_purged (
    one     boolean NOT NULL DEFAULT true
                    CONSTRAINT product_changes_purged_pkey PRIMARY KEY
                    CONSTRAINT product_changes_purged_one_check CHECK (one),
    through bigint  NOT NULL DEFAULT 0
);
INSERT INTO product_changes_purged DEFAULT VALUES ON CONFLICT DO NOTHING;

DO $$
BEGIN
    IF to_regtype('product_change_api') IS NULL THEN
        CREATE TYPE product_change_api AS (
            seq      text,
            type     text,
            sku      text,
            product  json,
            changed  text[],
            movement json,
            at       text
        );
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION product_change_json(c product_changes) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        c.seq::text,
        c.type,
        c.sku,
        c.product,
        coalesce(c.changed, '{}'),
        c.movement,
        to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::product_change_api)
$$;

-- The triggers. Statement-level with transition tables: one INSERT ... SELECT per statement,
-- so a million-row import writes its events set-wise, not a million function calls.
-- SECURITY DEFINER: they write the log the service may only read; the fixed search_path
-- keeps a caller's own objects out of them. They do not NOTIFY: a committing transaction
-- with a notification takes a database-wide lock until its commit is done, which halved
-- write throughput here; the sequencers poll instead (a cheap call when nothing is new).
CREATE OR REPLACE FUNCTION product_changes_log_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    INSERT INTO product_changes (xact, type, product_id, sku, product, changed)
    SELECT pg_current_xact_id()::text::bigint, 'product.created', n.id, n.sku,
           product_json(n), '{}'
    FROM new_rows n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION product_changes_log_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    INSERT INTO product_changes (xact, type, product_id, sku, product, changed)
    SELECT pg_current_xact_id()::text::bigint, 'product.deleted', o.id, o.sku,
           product_json(o), '{}'
    FROM old_rows o;
    RETURN NULL;
END
$$;

-- The fields of the API representation (product_json) whose value differs between two
-- states of a product, in the representation's order. Generated from product_json's own keys
-- (each is a column of products), so a field added to the representation is compared here
-- without a second list to keep in step; compared column by column rather than as JSON,
-- because a bulk update pays for it on every row.
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION product_changed_fields(o products, n products) '
        'RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        (SELECT 'SELECT array_remove(ARRAY['
                || string_agg(format('CASE WHEN n.%1$I IS DISTINCT FROM o.%1$I THEN %1$L END',
                                     key), ', ' ORDER BY i)
                || '], NULL)'
         FROM json_object_keys(product_json(NULL::products)) WITH ORDINALITY k(key, i)));
END
$$;

-- An update that changes no field (possible within one transaction, where updated_at stays)
-- logs nothing.
CREATE OR REPLACE FUNCTION product_changes_log_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    this_xact bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF current_setting('inventory.pending_movements', true) IS DISTINCT FROM this_xact::text THEN
        INSERT INTO product_changes (xact, type, product_id, sku, product, changed)
        SELECT this_xact, 'product.updated', n.id, n.sku, product_json(n),
               product_changed_fields(o, n)
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE cardinality(product_changed_fields(o, n)) > 0;
    ELSE
        -- This transaction wrote movements before their product's update (psql can, the API
        -- does not): such a movement waits in an event with changed NULL, the latest of its
        -- product, which this update completes when it sets the movement's quantity_after.
        WITH diff AS MATERIALIZED (
            SELECT n.id, n.sku, n.quantity, product_json(n) AS product,
                   product_changed_fields(o, n) AS changed
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE cardinality(product_changed_fields(o, n)) > 0
        ), completed AS (
            UPDATE product_changes c
            SET sku = d.sku, product = d.product, changed = d.changed
            FROM diff d
            CROSS JOIN LATERAL (SELECT max(w.id) AS id FROM product_changes w
                                WHERE w.seq IS NULL AND w.product_id = d.id) latest
            WHERE c.id = latest.id
              AND c.xact = this_xact AND c.changed IS NULL
              AND (c.movement ->> 'quantity_after')::integer = d.quantity
            RETURNING c.product_id
        )
        INSERT INTO product_changes (xact, type, product_id, sku, product, changed)
        SELECT this_xact, 'product.updated', d.id, d.sku, d.product, d.changed
        FROM diff d
        -- NOT EXISTS, not NOT IN: an anti-join at any size (NOT IN over a set larger than
        -- work_mem is a scan of that set per row).
        WHERE NOT EXISTS (SELECT FROM completed x WHERE x.product_id = d.id);
    END IF;
    RETURN NULL;
END
$$;

-- A stock movement belongs to its product's latest event in the same transaction (the API
-- writes the update and the movement in one statement; an import's stock count likewise)
-- when that event is an update that set the quantity to the movement's quantity_after.
-- While a transaction holds a product's row lock, no other can add an event of that product,
-- so the product's latest unsequenced event is this transaction's if it has one. A movement
-- with no such event (written before the update, or alone) gets an event of its own, taken
-- under the product's row lock like any change, which a later update in this transaction
-- completes (product_changes_log_update, told by the setting inventory.pending_movements).
CREATE OR REPLACE FUNCTION product_changes_log_movement() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    this_xact bigint := pg_current_xact_id()::text::bigint;
    attached bigint;
BEGIN
    UPDATE product_changes c
    SET movement = movement_json(m)
    FROM new_rows m
    -- LATERAL, not `c.id = (subquery)`: an equality the planner can join on. The scalar
    -- subquery was a filter over every (event, row) pair: quadratic, 20+ minutes for a
    -- stock count of 1M products.
    CROSS JOIN LATERAL (SELECT max(w.id) AS id FROM product_changes w
                        WHERE w.seq IS NULL AND w.product_id = m.product_id) latest
    WHERE c.id = latest.id
      AND c.xact = this_xact AND c.type = 'product.updated' AND c.movement IS NULL
      AND 'quantity' = ANY (c.changed)
      AND (c.product ->> 'quantity')::integer = m.quantity_after;
    GET DIAGNOSTICS attached = ROW_COUNT;
    IF attached < (SELECT count(*) FROM new_rows) THEN
        INSERT INTO product_changes (xact, type, product_id, sku, product, changed, movement)
        SELECT this_xact, 'product.updated', p.id, p.sku, product_json(p), NULL,
               movement_json(m)
        FROM new_rows m JOIN products p ON p.id = m.product_id
        WHERE NOT EXISTS (SELECT FROM product_changes c
                          WHERE c.seq IS NULL AND c.product_id = m.product_id
                            AND c.xact = this_xact AND (c.movement ->> 'id')::bigint = m.id)
        ORDER BY m.id
        FOR NO KEY UPDATE OF p;
        -- Session-wide but naming this transaction: it cannot match any other.
        PERFORM set_config('inventory.pending_movements', this_xact::text, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER product_changes_log_insert
    AFTER INSERT ON products REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION product_changes_log_insert();
CREATE OR REPLACE TRIGGER product_changes_log_update
    AFTER UPDATE ON products REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION product_changes_log_update();
CREATE OR REPLACE TRIGGER product_changes_log_delete
    AFTER DELETE ON products REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION product_changes_log_delete();
CREATE OR REPLACE TRIGGER product_changes_log_movement
    AFTER INSERT ON stock_movements REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION product_changes_log_movement();

-- TRUNCATE fires no DELETE trigger: it would take products out of the log's sight.
CREATE OR REPLACE FUNCTION products_refuse_truncate() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'TRUNCATE products would bypass the change log; use DELETE'
        USING ERRCODE = 'feature_not_supported';
END
$$;

CREATE OR REPLACE TRIGGER products_refuse_truncate
    BEFORE TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION products_refuse_truncate();

-- The sequencer: gives the committed, unsequenced events (oldest id first, at most max_rows)
-- the next seq numbers, queues their webhook deliveries, and NOTIFYs product_changes with
-- the last seq given. One runs at a time (a transaction-scoped advisory lock on (the log's
-- oid, 1)); returns how many events it numbered, or NULL when another sequencer held the
-- lock (with wait, it queues for the lock instead). Each call is its own transaction: call
-- it in autocommit, again while it returns max_rows.
--
-- Why this is exactly once: the lock is taken before the statement's snapshot, so everything
-- the previous sequencer committed is visible; an event is only numbered once its transaction
-- committed; numbers continue from the highest given (dense, and monotonic because
-- sequencers are serialised); every run commits as a whole, so a reader sees a prefix of
-- seq. Per product, a later change's transaction committed after the earlier one's (row
-- lock), so it is never visible without it and comes later in id order.
CREATE OR REPLACE FUNCTION product_changes_sequence(
    max_rows integer DEFAULT 10000, wait boolean DEFAULT false
) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    lock_key integer := 'product_changes'::regclass::oid::integer;
    last_seq bigint;
    stamp timestamptz;
    how_many bigint;
    top bigint;
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock(lock_key, 1);
    ELSIF NOT pg_try_advisory_xact_lock(lock_key, 1) THEN
        RETURN NULL;
    END IF;
    stamp := clock_timestamp();
    SELECT coalesce(
        (SELECT max(seq) FROM product_changes WHERE seq IS NOT NULL),
        (SELECT through FROM product_changes_purged),
        0
    ) INTO last_seq;
    WITH batch AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n
        FROM (SELECT id FROM product_changes WHERE seq IS NULL ORDER BY id LIMIT max_rows) b
    ), numbered AS (
        UPDATE product_changes c
        SET seq = last_seq + b.n, sequenced_at = stamp
        FROM batch b
        WHERE c.id = b.id
        RETURNING c.seq, c.type
    ), queued AS (
        INSERT INTO webhook_deliveries (webhook_id, seq)
        SELECT w.id, n.seq
        FROM numbered n JOIN webhooks w ON w.events && ARRAY[n.type, '*']
    )
    SELECT count(*), max(seq) INTO how_many, top FROM numbered;
    IF how_many > 0 THEN
        PERFORM pg_notify('product_changes', top::text);
    END IF;
    RETURN how_many;
END
$$;

-- Webhooks: the subscriptions; the queue of deliveries still to make, one row per
-- (subscription, event); the log of attempts. The sequencer queues deliveries in the
-- transaction that numbers the events, so no event is numbered without them. Any number of
-- processes deliver: each claims due rows with FOR UPDATE SKIP LOCKED, moving next_attempt_at
-- past its own timeout (a lease: a process that dies mid-attempt leaves the row due again),
-- makes the attempt, then in one transaction logs it and deletes the row (delivered, or
-- given up) or schedules the next attempt. At least once; each attempt by one process.
CREATE TABLE IF NOT EXISTS webhooks (
    id          bigint      GENERATED ALWAYS AS IDENTITY CONSTRAINT webhooks_pkey PRIMARY KEY,
    url         text        NOT NULL
                            CONSTRAINT webhooks_url_check
                            CHECK (char_length(url) <= 2000 AND url ~* '^https?://[^/?#]'),
    events      text[]      NOT NULL
                            CONSTRAINT webhooks_events_check
                            CHECK (cardinality(events) BETWEEN 1 AND 4
                                   AND array_position(events, NULL) IS NULL
                                   AND events <@ ARRAY['*', 'product.created',
                                                       'product.updated', 'product.deleted']),
    description text
                            CONSTRAINT webhooks_description_check
                            CHECK (char_length(description) <= 500),
    -- The signing key, shown to the client once (POST /webhooks) and never again.
    secret      text        NOT NULL
                            CONSTRAINT webhooks_secret_check
                            CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{16,}={0,2}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               bigint      GENERATED ALWAYS AS IDENTITY
                                 CONSTRAINT webhook_deliveries_pkey PRIMARY KEY,
    webhook_id       bigint      NOT NULL
                                 CONSTRAINT webhook_deliveries_webhook_id_fkey
                                 REFERENCES webhooks (id) ON DELETE CASCADE,
    seq              bigint      NOT NULL,
    -- Attempts claimed so far; the next claim makes attempt attempts + 1.
    attempts         integer     NOT NULL DEFAULT 0
                                 CONSTRAINT webhook_deliveries_attempts_check
                                 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_webhook_id_seq_key UNIQUE (webhook_id, seq)
);

-- The workers' queue, per subscription (webhook_deliveries_claim) and overall (when the next
-- one falls due); the oldest undelivered event (metrics, and where retention stops).
CREATE INDEX IF NOT EXISTS webhook_deliveries_webhook_id_next_attempt_at_idx
    ON webhook_deliveries (webhook_id, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_next_attempt_at_idx
    ON webhook_deliveries (next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_seq_idx
    ON webhook_deliveries (seq);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY
                            CONSTRAINT webhook_attempts_pkey PRIMARY KEY,
    webhook_id  bigint      NOT NULL
                            CONSTRAINT webhook_attempts_webhook_id_fkey
                            REFERENCES webhooks (id) ON DELETE CASCADE,
    seq         bigint      NOT NULL,
    attempt     integer     NOT NULL
                            CONSTRAINT webhook_attempts_attempt_check CHECK (attempt >= 1),
    -- delivered (a 2xx came back), retry (another attempt is scheduled), failed (given up).
    outcome     text        NOT NULL
                            CONSTRAINT webhook_attempts_outcome_check
                            CHECK (outcome IN ('delivered', 'retry', 'failed')),
    -- NULL when no answer came (timeout, refused connection); error says what happened.
    status_code smallint
                            CONSTRAINT webhook_attempts_status_code_check
                            CHECK (status_code BETWEEN 100 AND 599),
    error       text
                            CONSTRAINT webhook_attempts_error_check
                            CHECK (char_length(error) <= 1000),
    duration_ms integer     NOT NULL
                            CONSTRAINT webhook_attempts_duration_ms_check
                            CHECK (duration_ms >= 0),
    at          timestamptz NOT NULL DEFAULT now(),
    -- An attempt is logged once, by the process that claimed it; seq first for retention.
    CONSTRAINT webhook_attempts_seq_webhook_id_attempt_key UNIQUE (seq, webhook_id, attempt)
);

-- GET /webhooks/{id}/deliveries, newest first; also serves the cascade from webhooks.
CREATE INDEX IF NOT EXISTS webhook_attempts_webhook_id_id_idx
    ON webhook_attempts (webhook_id, id);

-- The API representations of a subscription (never its secret) and of a delivery attempt.
DO $$
BEGIN
    IF to_regtype('webhook_api') IS NULL THEN
        CREATE TYPE webhook_api AS (
            id          bigint,
            url         text,
            events      text[],
            description text,
            created_at  text
        );
    END IF;
    IF to_regtype('webhook_attempt_api') IS NULL THEN
        CREATE TYPE webhook_attempt_api AS (
            seq         text,
            attempt     integer,
            status_code smallint,
            error       text,
            duration_ms integer,
            at          text,
            outcome     text
        );
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhook_json(w webhooks) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        w.id,
        w.url,
        w.events,
        w.description,
        to_char(w.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::webhook_api)
$$;

CREATE OR REPLACE FUNCTION webhook_attempt_json(a webhook_attempts) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        a.seq::text,
        a.attempt,
        a.status_code,
        a.error,
        a.duration_ms,
        to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        a.outcome
    )::webhook_attempt_api)
$$;

-- The delivery protocol, shared by every process on every host.
--
-- Claim: up to max_rows due deliveries, at most per_webhook of each subscription and none of
-- the subscriptions in `skip` (a process passes those at its own limit: a slow receiver
-- cannot take every slot), oldest due first. Rows another process is claiming are skipped,
-- never waited for. Each claimed row's attempt count goes up and its next_attempt_at moves
-- lease_seconds ahead: a process that dies mid-attempt leaves the row due again then, so the
-- lease must outlast an attempt. Call in its own short transaction (autocommit).
CREATE OR REPLACE FUNCTION webhook_deliveries_claim(
    max_rows integer, per_webhook integer, skip bigint[], lease_seconds double precision
) RETURNS TABLE (delivery_id bigint, webhook_id bigint, seq bigint, attempt integer,
                 url text, secret text, event text)
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
    WITH due AS (
        SELECT d.id
        FROM webhooks w
        CROSS JOIN LATERAL (
            SELECT x.id, x.next_attempt_at
            FROM webhook_deliveries x
            WHERE x.webhook_id = w.id AND x.next_attempt_at <= now()
            ORDER BY x.next_attempt_at
            LIMIT per_webhook
            FOR UPDATE SKIP LOCKED
        ) d
        WHERE w.id <> ALL (coalesce(skip, '{}'))
        ORDER BY d.next_attempt_at
        LIMIT max_rows
    )
    UPDATE webhook_deliveries x
    SET attempts = x.attempts + 1,
        next_attempt_at = now() + make_interval(secs => lease_seconds),
        first_attempt_at = coalesce(x.first_attempt_at, now())
    FROM due, webhooks w, product_changes c
    WHERE x.id = due.id AND w.id = x.webhook_id AND c.seq = x.seq
    RETURNING x.id, x.webhook_id, x.seq, x.attempts, w.url, w.secret,
              product_change_json(c)::text
$$;

-- Finish: logs the attempt and applies what follows, in one transaction. A 2xx (ok)
-- delivers; otherwise the next attempt comes retry_seconds * 2^(attempt - 1) later, but never
-- later than give_up_after past the first attempt, and an attempt that fails after that
-- gives up (failed). Returns the outcome; NULL when the attempt is no longer the caller's
-- (its lease ran out and another process took the row, or the webhook was deleted).
CREATE OR REPLACE FUNCTION webhook_delivery_finish(
    delivery_id bigint, attempt integer, ok boolean, status_code integer, error text,
    duration_ms integer, retry_seconds double precision, give_up_after interval
) RETURNS text
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    claimed webhook_deliveries;
    outcome text;
BEGIN
    SELECT * INTO claimed FROM webhook_deliveries x
    WHERE x.id = delivery_id AND x.attempts = attempt
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    outcome := CASE WHEN ok THEN 'delivered'
                    WHEN now() >= claimed.first_attempt_at + give_up_after THEN 'failed'
                    ELSE 'retry' END;
    INSERT INTO webhook_attempts (webhook_id, seq, attempt, outcome, status_code, error,
                                  duration_ms)
    VALUES (claimed.webhook_id, claimed.seq, attempt, outcome, status_code, left(error, 1000),
            greatest(duration_ms, 0));
    IF outcome = 'retry' THEN
        UPDATE webhook_deliveries x
        SET next_attempt_at = least(
            now() + make_interval(secs => retry_seconds * 2 ^ least(attempt - 1, 30)),
            claimed.first_attempt_at + give_up_after)
        WHERE x.id = delivery_id;
    ELSE
        DELETE FROM webhook_deliveries x WHERE x.id = delivery_id;
    END IF;
    RETURN outcome;
END
$$;

-- Release: a claimed delivery handed back unattempted (its process is stopping), due now and
-- as if the claim had not happened. Returns false when it was no longer the caller's.
CREATE OR REPLACE FUNCTION webhook_delivery_release(delivery_id bigint, attempt integer)
    RETURNS boolean
    LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS
$$
    WITH released AS (
        UPDATE webhook_deliveries x
        SET attempts = x.attempts - 1, next_attempt_at = now()
        WHERE x.id = delivery_id AND x.attempts = attempt
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM released)
$$;

-- Retention: removes, in one batch of at most max_rows, the oldest events that were numbered
-- more than retention_days ago, in seq order and never past an event a webhook has yet to
-- get, and the logged delivery attempts of the removed events.
-- Records the last removed seq in product_changes_purged (GET /changes answers 410 for a
-- cursor before it). One runs at a time (advisory lock (the log's oid, 2)); returns the
-- number of events removed, NULL when another purge held the lock. The floor of one day
-- keeps a caller from emptying the log.
CREATE OR REPLACE FUNCTION product_changes_purge(
    retention_days integer, max_rows integer DEFAULT 10000
) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    cutoff timestamptz;
    done_through bigint;
    upto bigint;
    removed bigint;
BEGIN
    IF retention_days IS NULL OR retention_days < 1 THEN
        RAISE EXCEPTION 'retention_days must be at least 1, not %', retention_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock('product_changes'::regclass::oid::integer, 2) THEN
        RETURN NULL;
    END IF;
    cutoff := now() - make_interval(days => retention_days);
    -- The mark's row, should anyone have deleted it.
    INSERT INTO product_changes_purged DEFAULT VALUES ON CONFLICT DO NOTHING;
    SELECT through INTO done_through FROM product_changes_purged FOR UPDATE;
    -- Seq numbers are dense, so the next max_rows events are seq through+1 .. through+max_rows;
    -- the batch stops before the first one still within retention or still to be delivered.
    SELECT least(
        max(seq),
        min(seq) FILTER (WHERE sequenced_at >= cutoff) - 1,
        (SELECT min(d.seq) - 1 FROM webhook_deliveries d)
    ) INTO upto
    FROM product_changes
    WHERE seq > done_through AND seq <= done_through + max_rows;
    IF upto IS NULL OR upto <= done_through THEN
        RETURN 0;
    END IF;
    DELETE FROM product_changes WHERE seq > done_through AND seq <= upto;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE product_changes_purged SET through = upto;
    DELETE FROM webhook_attempts WHERE seq > done_through AND seq <= upto;
    RETURN removed;
END
$$;

COMMENT ON TABLE product_changes IS
    'The change log: one event per change of a product, written by triggers in the changing transaction.';
COMMENT ON COLUMN product_changes.id IS 'Insertion order; per product, the order the changes were made.';
COMMENT ON COLUMN product_changes.seq IS
    'The cursor of GET /changes: given after commit by product_changes_sequence(); NULL until then.';
COMMENT ON COLUMN product_changes.xact IS 'The writing transaction (pg_current_xact_id()).';
COMMENT ON COLUMN product_changes.type IS 'product.created, product.updated or product.deleted.';
COMMENT ON COLUMN product_changes.product_id IS 'The product (it may since have been deleted).';
COMMENT ON COLUMN product_changes.sku IS 'The product''s SKU after the change (the last one for a delete).';
COMMENT ON COLUMN product_changes.product IS
    'product_json of the product after the change; for a delete, its last state.';
COMMENT ON COLUMN product_changes.changed IS
    'Fields of product_json whose value changed; empty for created and deleted.';
COMMENT ON COLUMN product_changes.movement IS
    'movement_json of the stock movement the change recorded, if any.';
COMMENT ON COLUMN product_changes.at IS 'When the change was made (its transaction''s time, like updated_at).';
COMMENT ON COLUMN product_changes.sequenced_at IS 'When seq was given; retention counts from here.';
COMMENT ON TABLE product_changes_purged IS
    'Retention''s mark: every event with seq <= through has been removed, every later one is kept.';
COMMENT ON TYPE product_change_api IS 'The fields of an event as the API returns them.';
COMMENT ON FUNCTION product_change_json(product_changes) IS
    'The API representation of an event of GET /changes.';
COMMENT ON FUNCTION product_changes_sequence(integer, boolean) IS
    'Numbers committed events (one caller at a time); returns how many, NULL if another runs.';
COMMENT ON FUNCTION product_changes_purge(integer, integer) IS
    'Removes one batch of events older than the retention; returns how many, NULL if another runs.';
COMMENT ON TABLE webhooks IS 'Webhook subscriptions (POST /webhooks).';
COMMENT ON COLUMN webhooks.secret IS 'whsec_ + base64 signing key; the API shows it only when created.';
COMMENT ON COLUMN webhooks.events IS 'Event types delivered, or {*} for all.';
COMMENT ON TABLE webhook_deliveries IS
    'Deliveries still to make, one per (webhook, event); removed once delivered or given up.';
COMMENT ON COLUMN webhook_deliveries.next_attempt_at IS
    'Due time; a claimed delivery''s lease (pushed past the attempt''s timeout).';
COMMENT ON TYPE webhook_api IS 'The fields of a webhook as the API returns them (no secret).';
COMMENT ON FUNCTION webhook_json(webhooks) IS 'The API representation of a webhook, without its secret.';
COMMENT ON TYPE webhook_attempt_api IS 'The fields of a delivery attempt as the API returns them.';
COMMENT ON FUNCTION webhook_attempt_json(webhook_attempts) IS
    'The API representation of a delivery attempt (GET /webhooks/{id}/deliveries).';
COMMENT ON FUNCTION webhook_deliveries_claim(integer, integer, bigint[], double precision) IS
    'Claims due webhook deliveries for one process (SKIP LOCKED, with a lease).';
COMMENT ON FUNCTION
    webhook_delivery_finish(bigint, integer, boolean, integer, text, integer, double precision,
                            interval) IS
    'Logs a delivery attempt and delivers, schedules the next attempt or gives up.';
COMMENT ON FUNCTION webhook_delivery_release(bigint, integer) IS
    'Hands a claimed webhook delivery back unattempted (the claiming process is stopping).';
COMMENT ON TABLE webhook_attempts IS 'Every delivery attempt and its outcome (GET /webhooks/{id}/deliveries).';
COMMENT ON CONSTRAINT product_changes_pkey ON product_changes IS
    'One row per event; ids follow insertion, so per product the order the changes were made.';
COMMENT ON CONSTRAINT product_changes_type_check ON product_changes IS
    'Event type: product.created, product.updated or product.deleted.';
COMMENT ON CONSTRAINT product_changes_sequenced_check ON product_changes IS
    'seq and sequenced_at come together: an event is numbered, once, with the time it was.';
COMMENT ON INDEX product_changes_pkey IS 'The index of product_changes_pkey: an event by id.';
COMMENT ON INDEX product_changes_seq_key IS
    'Each seq names one event, the cursor of GET /changes (seq > after ORDER BY seq); '
    'events not yet numbered have no entry.';
COMMENT ON INDEX product_changes_unsequenced_idx IS
    'The sequencer''s work list: events not yet numbered, in insertion order.';
COMMENT ON INDEX product_changes_unsequenced_product_idx IS
    'The triggers'' look-up of a product''s events not yet numbered (their own transaction''s).';
COMMENT ON CONSTRAINT product_changes_purged_pkey ON product_changes_purged IS
    'Retention keeps one mark: one row, keyed by the constant one.';
COMMENT ON CONSTRAINT product_changes_purged_one_check ON product_changes_purged IS
    'The key can only be true, so the table holds at most one row.';
COMMENT ON INDEX product_changes_purged_pkey IS 'The index of product_changes_purged_pkey.';
COMMENT ON CONSTRAINT webhooks_pkey ON webhooks IS 'One row per subscription (/webhooks/{id}).';
COMMENT ON CONSTRAINT webhooks_url_check ON webhooks IS
    'URL: http:// or https:// and a host, at most 2000 characters.';
COMMENT ON CONSTRAINT webhooks_events_check ON webhooks IS
    'Events: 1-4 of *, product.created, product.updated, product.deleted; no NULL.';
COMMENT ON CONSTRAINT webhooks_description_check ON webhooks IS
    'Description: at most 500 characters (NULL: none).';
COMMENT ON CONSTRAINT webhooks_secret_check ON webhooks IS
    'Signing secret: whsec_ and at least 16 base64 characters (Standard Webhooks).';
COMMENT ON INDEX webhooks_pkey IS 'The index of webhooks_pkey: a subscription by id.';
COMMENT ON CONSTRAINT webhook_deliveries_pkey ON webhook_deliveries IS
    'One row per delivery still to make.';
COMMENT ON CONSTRAINT webhook_deliveries_webhook_id_fkey ON webhook_deliveries IS
    'A delivery belongs to a subscription and goes with it (ON DELETE CASCADE).';
COMMENT ON CONSTRAINT webhook_deliveries_attempts_check ON webhook_deliveries IS
    'Attempts claimed so far: never negative.';
COMMENT ON CONSTRAINT webhook_deliveries_webhook_id_seq_key ON webhook_deliveries IS
    'One delivery per subscription and event: an event is never queued twice for a webhook.';
COMMENT ON INDEX webhook_deliveries_pkey IS 'The index of webhook_deliveries_pkey: a delivery by id.';
COMMENT ON INDEX webhook_deliveries_webhook_id_seq_key IS
    'The index of webhook_deliveries_webhook_id_seq_key: a delivery by subscription and event.';
COMMENT ON INDEX webhook_deliveries_webhook_id_next_attempt_at_idx IS
    'The workers'' queue per subscription: its due deliveries (webhook_deliveries_claim).';
COMMENT ON INDEX webhook_deliveries_next_attempt_at_idx IS
    'The workers'' queue overall: when the next delivery falls due.';
COMMENT ON INDEX webhook_deliveries_seq_idx IS
    'The oldest undelivered event: the metric, and where retention must stop.';
COMMENT ON CONSTRAINT webhook_attempts_pkey ON webhook_attempts IS
    'One row per attempt; ids follow the order attempts were logged.';
COMMENT ON CONSTRAINT webhook_attempts_webhook_id_fkey ON webhook_attempts IS
    'An attempt belongs to a subscription and goes with it (ON DELETE CASCADE).';
COMMENT ON CONSTRAINT webhook_attempts_attempt_check ON webhook_attempts IS
    'Attempts count from 1.';
COMMENT ON CONSTRAINT webhook_attempts_outcome_check ON webhook_attempts IS
    'Outcome: delivered (a 2xx came back), retry (another attempt is scheduled) or failed (given up).';
COMMENT ON CONSTRAINT webhook_attempts_status_code_check ON webhook_attempts IS
    'The status the receiver answered is an HTTP status (100-599); NULL when no answer came.';
COMMENT ON CONSTRAINT webhook_attempts_error_check ON webhook_attempts IS
    'What went wrong: at most 1000 characters.';
COMMENT ON CONSTRAINT webhook_attempts_duration_ms_check ON webhook_attempts IS
    'Duration: never negative.';
COMMENT ON CONSTRAINT webhook_attempts_seq_webhook_id_attempt_key ON webhook_attempts IS
    'An attempt is logged once, by the process that claimed it.';
COMMENT ON INDEX webhook_attempts_pkey IS 'The index of webhook_attempts_pkey: an attempt by id.';
COMMENT ON INDEX webhook_attempts_seq_webhook_id_attempt_key IS
    'The index of webhook_attempts_seq_webhook_id_attempt_key, seq first: retention removes '
    'attempts by a range of seq.';
COMMENT ON INDEX webhook_attempts_webhook_id_id_idx IS
    'GET /webhooks/{id}/deliveries, newest first; also the cascade from webhooks.';

-- The service reads the log and never writes it: the triggers and the two functions do.
GRANT SELECT ON product_changes, product_changes_purged TO inventory_rw;
GRANT USAGE ON TYPE product_change_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_change_json(product_changes) TO inventory_rw;
REVOKE EXECUTE ON FUNCTION
    product_changes_sequence(integer, boolean),
    product_changes_purge(integer, integer),
    product_changes_log_insert(),
    product_changes_log_update(),
    product_changes_log_delete(),
    product_changes_log_movement()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    product_changes_sequence(integer, boolean),
    product_changes_purge(integer, integer)
    TO inventory_rw;
GRANT SELECT, INSERT, DELETE ON webhooks TO inventory_rw;
GRANT SELECT, DELETE, UPDATE (attempts, next_attempt_at, first_attempt_at)
    ON webhook_deliveries TO inventory_rw;
GRANT SELECT, INSERT ON webhook_attempts TO inventory_rw;
-- Analysts (inventory_reader) read the change log like the products, not the webhooks: their
-- secrets and where events go are the writers' business.
GRANT SELECT ON product_changes, product_changes_purged TO inventory_reader;
GRANT EXECUTE ON FUNCTION product_change_json(product_changes) TO inventory_reader;
GRANT USAGE ON TYPE webhook_api, webhook_attempt_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION webhook_json(webhooks), webhook_attempt_json(webhook_attempts)
    TO inventory_rw;
REVOKE EXECUTE ON FUNCTION
    webhook_deliveries_claim(integer, integer, bigint[], double precision),
    webhook_delivery_release(bigint, integer),
    webhook_delivery_finish(bigint, integer, boolean, integer, text, integer, double precision,
                            interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    webhook_deliveries_claim(integer, integer, bigint[], double precision),
    webhook_delivery_release(bigint, integer),
    webhook_delivery_finish(bigint, integer, boolean, integer, text, integer, double precision,
                            interval)
    TO inventory_rw;
