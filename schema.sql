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

-- Stock in many locations came with the third release. quantity is the sum over every
-- location, reserved the units held by active reservations, available what can still be
-- taken: stored totals, kept equal to the sums by the ledger's trigger (below) in the same
-- transaction, so a lookup or a page never sums anything. available is generated so that
-- low_stock can be answered from an index.
ALTER TABLE products ADD COLUMN IF NOT EXISTS reserved integer NOT NULL DEFAULT 0;
ALTER TABLE products ADD COLUMN IF NOT EXISTS available integer
    GENERATED ALWAYS AS (quantity - reserved) STORED;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'products'::regclass
                     AND conname = 'products_reserved_check') THEN
        ALTER TABLE products ADD CONSTRAINT products_reserved_check
            CHECK (reserved >= 0 AND reserved <= quantity);
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
-- (Before reservations, low meant quantity <= reorder_point: that index is replaced.)
DO $$
BEGIN
    IF pg_get_indexdef(to_regclass('products_low_stock_idx')) NOT LIKE '%available%' THEN
        DROP INDEX products_low_stock_idx;
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS products_low_stock_idx
    ON products (created_at, id) WHERE available <= reorder_point;

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
        'reserved integer, available integer, reorder_point integer, created_at text, '
        'updated_at text';
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
        p.reserved,
        p.available,
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
COMMENT ON COLUMN products.quantity IS
    'Units on hand over every location (the sum of product_stock.quantity), never negative; '
    'changed only by the ledger (stock_movements).';
COMMENT ON COLUMN products.reserved IS
    'Units held by active reservations over every location (the sum of product_stock.reserved).';
COMMENT ON COLUMN products.available IS 'quantity - reserved: what can still be taken.';
COMMENT ON COLUMN products.reorder_point IS
    'Optional: the product is low on stock when available <= reorder_point; NULL = never low.';
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
COMMENT ON CONSTRAINT products_reserved_check ON products IS
    'Reserved units are never negative and never more than the units on hand: nothing is oversold.';
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
    'GET /products?low_stock=true: only the products whose available units are at or below their '
    'reorder point, in list order.';

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

-- The ledger: one row per stock movement, and the only way stock moves. The writer inserts
-- movements; their trigger (stock_movements_apply, below) applies them to the stock, so for
-- every product and location, quantity = starting quantity + sum(delta), and quantity_after
-- is the quantity the movement left there. Insert-only.
CREATE TABLE IF NOT EXISTS stock_movements (
    id             bigint      GENERATED ALWAYS AS IDENTITY
                               CONSTRAINT stock_movements_pkey PRIMARY KEY,
    -- The product it moved. No foreign key: movements outlive their product (docs/api.md, DELETE),
    -- and ids are never reused; the ledger's trigger checks that new rows name one.
    product_id     bigint      NOT NULL,
    delta          integer     NOT NULL
                               CONSTRAINT stock_movements_delta_check CHECK (delta <> 0),
    -- A CHECKed set rather than an enum: adding a reason is one guarded ALTER of a named
    -- constraint, and the name is what the API maps to a field.
    reason         text        NOT NULL
                               CONSTRAINT stock_movements_reason_check
                               CHECK (reason IN ('received', 'sold', 'returned', 'damaged',
                                                 'correction', 'transfer')),
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

-- The ledger's trigger (stock_movements_apply, below) checks that new movements name products
-- that exist, set-wise; a row-level trigger did before, and planned its lookup once per
-- session, which could leave it scanning the products once per movement.
DROP TRIGGER IF EXISTS stock_movements_product_exists ON stock_movements;
DROP FUNCTION IF EXISTS stock_movements_product_exists();

-- Locations came with the third release: a movement names where it happened by the code the
-- location had (kept when the location is deleted: the stock really moved there). A constant
-- default, so adding it to a large ledger rewrites nothing; every older movement was in MAIN.
ALTER TABLE stock_movements ADD COLUMN IF NOT EXISTS location text NOT NULL DEFAULT 'MAIN';
DO $$
BEGIN
    IF pg_get_constraintdef((SELECT oid FROM pg_constraint
                             WHERE conrelid = 'stock_movements'::regclass
                               AND conname = 'stock_movements_reason_check'))
       NOT LIKE '%transfer%' THEN
        ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_reason_check,
            ADD CONSTRAINT stock_movements_reason_check
            CHECK (reason IN ('received', 'sold', 'returned', 'damaged', 'correction',
                              'transfer'));
    END IF;
END
$$;

-- The movement's fields in API order; recreated (with the function returning it, and the
-- change log's view that calls it, both created again below) when a release changes them.
BEGIN;

DO $$
DECLARE
    wanted CONSTANT text :=
        'id bigint, delta integer, reason text, note text, location text, '
        'quantity_after integer, created_at text';
    stored text;
BEGIN
    SELECT string_agg(format('%s %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                      ORDER BY a.attnum)
      INTO stored
      FROM pg_type t
      JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE t.oid = to_regtype('movement_api');
    IF stored IS DISTINCT FROM wanted THEN
        IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('product_changes')) = 'v' THEN
            DROP VIEW product_changes;
        END IF;
        DROP FUNCTION IF EXISTS movement_json(stock_movements);
        DROP TYPE IF EXISTS movement_api;
        EXECUTE format('CREATE TYPE movement_api AS (%s)', wanted);
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
        m.location,
        m.quantity_after,
        to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::movement_api)
$$;

COMMIT;

COMMENT ON TABLE stock_movements IS
    'Stock ledger, the only way stock moves: per product and location, quantity = starting '
    'quantity + sum(delta). Insert-only; use adjust_stock() from psql.';
COMMENT ON COLUMN stock_movements.id IS
    'Identity; per product, id order is commit order (assigned under the product''s row lock).';
COMMENT ON COLUMN stock_movements.product_id IS
    'The product moved (checked on insert); stays when the product is deleted: the stock moved.';
COMMENT ON COLUMN stock_movements.delta IS 'Units added (positive) or removed (negative); never 0.';
COMMENT ON COLUMN stock_movements.reason IS
    'Why: received, sold, returned, damaged, correction or transfer.';
COMMENT ON COLUMN stock_movements.note IS 'Optional free text, at most 500 characters.';
COMMENT ON COLUMN stock_movements.quantity_after IS
    'The quantity at the movement''s location right after it: per product and location, a '
    'running sum in id order (checked by stock_movements_apply).';
COMMENT ON COLUMN stock_movements.location IS
    'The code of the location the stock moved at, as it was then (kept when the location goes).';
COMMENT ON COLUMN stock_movements.created_at IS 'When the movement was recorded (set by the database).';
COMMENT ON TYPE movement_api IS 'The fields of a movement as the API returns them (see movement_json).';
COMMENT ON FUNCTION movement_json(stock_movements) IS
    'The API representation of a stock movement, with an RFC 3339 UTC timestamp.';
COMMENT ON CONSTRAINT stock_movements_pkey ON stock_movements IS
    'One row per movement; per product, ids follow the order the movements were applied.';
COMMENT ON CONSTRAINT stock_movements_delta_check ON stock_movements IS
    'A movement moves stock: delta is never 0.';
COMMENT ON CONSTRAINT stock_movements_reason_check ON stock_movements IS
    'Reason: received, sold, returned, damaged, correction or transfer.';
COMMENT ON CONSTRAINT stock_movements_note_length_check ON stock_movements IS
    'Note: at most 500 characters (NULL: none).';
COMMENT ON CONSTRAINT stock_movements_quantity_after_check ON stock_movements IS
    'The quantity a movement leaves is never negative.';
COMMENT ON INDEX stock_movements_pkey IS 'The index of stock_movements_pkey: a movement by id.';
COMMENT ON INDEX stock_movements_product_id_id_idx IS
    'A product''s movements in id order: GET /products/{sku}/movements and the keyset of its pages.';

-- ---------------------------------------------------------------------------------------
-- Locations, the stock at each, and the ledger's trigger, which alone moves it.
-- ---------------------------------------------------------------------------------------
--
-- The rules, for every client (the API, psql, a migration):
--   * product_stock holds the units on hand and reserved per (product, location), with
--     0 <= reserved <= quantity (product_stock_reserved_check): nothing is ever oversold.
--   * products.quantity and products.reserved are the sums over the locations, kept by the
--     same triggers in the same transaction: a lookup reads them, never sums.
--   * Stored quantities change only through the ledger: inserting movements into
--     stock_movements (adjust_stock() does it from psql) is the one way; a statement that
--     writes a quantity or reserved total itself is refused by a trigger naming the rule. The
--     ledger's own statements run inside its trigger, which is how the guards tell them
--     apart (pg_trigger_depth() > 0).
--   * A writer gives each movement its quantity_after, read from the stock row it locked;
--     the trigger applies a statement's movements set-wise and refuses the statement unless
--     every quantity_after is the running sum from the stored quantity. So the ledger adds
--     up whoever writes, at the cost of one UPDATE per statement rather than one per row.

CREATE TABLE IF NOT EXISTS locations (
    id         bigint      GENERATED ALWAYS AS IDENTITY
                           CONSTRAINT locations_pkey PRIMARY KEY,
    code       text        NOT NULL
                           CONSTRAINT locations_code_format_check
                           CHECK (char_length(code) BETWEEN 1 AND 64
                                  AND code ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$'),
    name       text        NOT NULL
                           CONSTRAINT locations_name_check
                           CHECK (char_length(name) BETWEEN 1 AND 200
                                  AND name ~ '[^[:space:]]'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Codes are unique ignoring case, like SKUs.
CREATE UNIQUE INDEX IF NOT EXISTS locations_code_lower_key
    ON locations (lower(code) text_pattern_ops);
CREATE INDEX IF NOT EXISTS locations_created_at_id_idx
    ON locations (created_at, id);

-- MAIN is location 0 in every database: where stock is when nobody names a location.
INSERT INTO locations (id, code, name) OVERRIDING SYSTEM VALUE
VALUES (0, 'MAIN', 'Main') ON CONFLICT DO NOTHING;

CREATE OR REPLACE TRIGGER locations_touch_updated_at
    BEFORE UPDATE ON locations
    FOR EACH ROW EXECUTE FUNCTION products_touch_updated_at();

CREATE TABLE IF NOT EXISTS product_stock (
    product_id  bigint  NOT NULL
                        CONSTRAINT product_stock_product_id_fkey
                        REFERENCES products (id) ON DELETE CASCADE,
    location_id bigint  NOT NULL
                        CONSTRAINT product_stock_location_id_fkey
                        REFERENCES locations (id) ON DELETE CASCADE,
    quantity    integer NOT NULL DEFAULT 0,
    reserved    integer NOT NULL DEFAULT 0,
    available   integer GENERATED ALWAYS AS (quantity - reserved) STORED,
    CONSTRAINT product_stock_reserved_check CHECK (0 <= reserved AND reserved <= quantity),
    CONSTRAINT product_stock_pkey PRIMARY KEY (product_id, location_id)
);

-- The stock at a location (GET /locations/{code}/stock) and whether a location is in use.
CREATE INDEX IF NOT EXISTS product_stock_location_id_product_id_idx
    ON product_stock (location_id, product_id);

-- A location goes only when nothing is there; MAIN never goes, and a code never changes
-- (the ledger keeps the codes movements were made at).
CREATE OR REPLACE FUNCTION locations_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'a location''s code cannot change (%)', OLD.code
            USING ERRCODE = 'integrity_constraint_violation', TABLE = 'locations',
                  CONSTRAINT = 'locations_code_fixed';
    END IF;
    IF OLD.id = 0 OR EXISTS (SELECT FROM product_stock s
                             WHERE s.location_id = OLD.id
                               AND (s.quantity <> 0 OR s.reserved <> 0)) THEN
        RAISE EXCEPTION 'location % is in use', OLD.code
            USING ERRCODE = 'restrict_violation', TABLE = 'locations',
                  CONSTRAINT = 'locations_in_use',
                  DETAIL = 'MAIN always stays; another location goes once it holds no units '
                           'and no reservations.';
    END IF;
    RETURN OLD;
END
$$;

CREATE OR REPLACE TRIGGER locations_guard
    BEFORE DELETE OR UPDATE OF code ON locations
    FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION locations_guard();

-- The guard of the stored quantities: refuses a statement a client runs that writes them.
CREATE OR REPLACE FUNCTION stock_through_ledger() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'stock moves only through the ledger: % cannot write quantity or reserved',
                    TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation', TABLE = TG_TABLE_NAME,
              CONSTRAINT = 'stock_through_ledger',
              HINT = 'Insert the movement into stock_movements, or call adjust_stock(sku, delta, '
                     'reason, note, location).';
END
$$;

CREATE OR REPLACE TRIGGER products_stock_through_ledger
    BEFORE UPDATE OF quantity, reserved ON products
    FOR EACH ROW
    WHEN ((OLD.quantity, OLD.reserved) IS DISTINCT FROM (NEW.quantity, NEW.reserved)
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION stock_through_ledger();
-- A new product may bring its starting quantity (it lands in MAIN), never reservations.
CREATE OR REPLACE TRIGGER products_reserved_through_ledger
    BEFORE INSERT ON products
    FOR EACH ROW WHEN (NEW.reserved <> 0)
    EXECUTE FUNCTION stock_through_ledger();
CREATE OR REPLACE TRIGGER product_stock_through_ledger
    BEFORE UPDATE OF quantity, reserved ON product_stock
    FOR EACH ROW
    WHEN ((OLD.quantity, OLD.reserved) IS DISTINCT FROM (NEW.quantity, NEW.reserved)
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION stock_through_ledger();
CREATE OR REPLACE TRIGGER product_stock_insert_through_ledger
    BEFORE INSERT ON product_stock
    FOR EACH ROW WHEN ((NEW.quantity <> 0 OR NEW.reserved <> 0) AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION stock_through_ledger();
CREATE OR REPLACE TRIGGER product_stock_delete_through_ledger
    BEFORE DELETE ON product_stock
    FOR EACH ROW WHEN ((OLD.quantity <> 0 OR OLD.reserved <> 0) AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION stock_through_ledger();

-- What a movement moved stays as it was: a movement changed or removed would leave the stock
-- it explains. (Its reason, note and time are descriptions; an owner may correct those.)
CREATE OR REPLACE FUNCTION stock_movements_keep() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the stock ledger keeps what moved: % of stock_movements is refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation', TABLE = 'stock_movements',
              CONSTRAINT = 'stock_movements_keep',
              HINT = 'Correct stock with a new movement (reason correction).';
END
$$;

CREATE OR REPLACE TRIGGER stock_movements_keep
    BEFORE UPDATE OF product_id, location, delta, quantity_after OR DELETE OR TRUNCATE
    ON stock_movements
    FOR EACH STATEMENT EXECUTE FUNCTION stock_movements_keep();
CREATE OR REPLACE TRIGGER product_stock_refuse_truncate
    BEFORE TRUNCATE ON product_stock
    FOR EACH STATEMENT EXECUTE FUNCTION stock_through_ledger();

-- A product's starting quantity is its stock in MAIN. Row by row for the API's one-row
-- inserts (the WHEN is evaluated without a call, so a product created with none costs
-- nothing), set-wise for the import's bulk statements, as the change log does.
CREATE OR REPLACE FUNCTION products_stock_created() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        INSERT INTO product_stock (product_id, location_id, quantity)
        VALUES (NEW.id, 0, NEW.quantity);
    ELSE
        INSERT INTO product_stock (product_id, location_id, quantity)
        SELECT n.id, 0, n.quantity FROM new_rows n WHERE n.quantity <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER products_stock_created
    AFTER INSERT ON products FOR EACH ROW
    WHEN (NEW.quantity <> 0
          AND current_setting('inventory.change_log', true) IS DISTINCT FROM 'bulk')
    EXECUTE FUNCTION products_stock_created();
CREATE OR REPLACE TRIGGER products_stock_created_bulk
    AFTER INSERT ON products REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (current_setting('inventory.change_log', true) = 'bulk')
    EXECUTE FUNCTION products_stock_created();

-- The ledger's trigger: applies a statement's movements to the stock and the totals, checks
-- that they follow the stock, and writes one change-log event per movement.
--   runs    per (product, location), quantity_after - (running sum of delta in id order) is
--           the quantity the movements started from: the same for every movement of the
--           group, and the stored quantity, or the writer did not follow the stock.
--   stocked one UPDATE of the groups' stock rows, matched only where that holds (a row
--           changed meanwhile is re-read under its lock and no longer matches); fewer rows
--           than groups (or no stock row: a location never stocked, or none of that code)
--           refuses the statement. Integer overflow (22003) and the CHECKs stay the last
--           guards: a location below what it has reserved violates product_stock_reserved_check.
--   totals  products.quantity moves by each product's sum; a transfer's sum is 0, so the
--           product row, its updated_at and its ETag stay.
-- Whether the planner would take product_stock or products for smaller than the rows a
-- statement of movements is about to update there (each one exists, or the statement fails):
-- statistics gathered when the table was nearly empty, or mostly dead rows, and not since.
-- It scales reltuples by the pages the table has now, as the planner does.
CREATE OR REPLACE FUNCTION stock_tables_misjudged(stock_rows bigint, product_rows bigint)
    RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS
$$
    SELECT bool_or(c.relpages > 0 AND c.reltuples >= 0
                   AND c.reltuples / c.relpages
                       * (pg_relation_size(c.oid) / current_setting('block_size')::integer)
                       < CASE WHEN c.oid = 'products'::regclass THEN product_rows
                              ELSE stock_rows END)
    FROM pg_class c
    WHERE c.oid IN ('product_stock'::regclass, 'products'::regclass)
$$;

-- The statement is written once and run two ways. PL/pgSQL keeps a static statement's plan
-- for the session, made from the sizes the tables and the transition table had at its first
-- call: made on near-empty tables (a new database, just analyzed), it scans a table once per
-- movement, harmless for the API's few but quadratic for a statement of thousands. So up to
-- 32 movements (an adjustment, a transfer, an order's fulfilment) it runs static, its plan
-- kept (planning it costs more than applying a few movements); above, EXECUTE plans it for
-- the statement in hand. A kept plan is dropped when ANALYZE (autovacuum's too) updates a
-- table's statistics. Planned afresh, it is still planned from statistics: when those are
-- provably stale (stock_tables_misjudged), a nested loop would put the table the planner
-- thinks has one row outside and the movements inside, quadratic again, so the statement runs
-- with hash or merge joins only (linear in the table and the movements).
DO $do$
DECLARE
    -- One statement: every part reads the rows as they were before it (the products' old
    -- states for `changed` included), and the events carry the states the UPDATE returns.
    apply text := $sql$
    WITH present AS (
        -- What the foreign key checked, as it did, with the same lock (KEY SHARE: a
        -- concurrent DELETE of the product waits for this transaction, and these movements
        -- fail if the delete won).
        SELECT p.id FROM products p
        WHERE EXISTS (SELECT FROM new_rows m WHERE m.product_id = p.id)
        FOR KEY SHARE OF p
    ), runs AS (
        SELECT m.product_id, lower(m.location) AS location, m.delta,
               m.quantity_after::bigint - sum(m.delta) OVER (
                   PARTITION BY m.product_id, lower(m.location) ORDER BY m.id) AS base
        FROM new_rows m
    ), moved AS (
        SELECT r.product_id, l.id AS location_id, min(r.base) AS base, max(r.base) AS top,
               sum(r.delta) AS delta
        FROM runs r LEFT JOIN locations l ON lower(l.code) = r.location
        GROUP BY r.product_id, r.location, l.id
    ), stocked AS (
        UPDATE product_stock s SET quantity = s.quantity + g.delta
        FROM moved g
        WHERE s.product_id = g.product_id AND s.location_id = g.location_id
          AND s.quantity = g.base AND g.top = g.base
        RETURNING s.product_id, g.delta
    ), sums AS (
        SELECT x.product_id, sum(x.delta) AS delta FROM stocked x GROUP BY x.product_id
    ), before AS (
        SELECT p.id, p AS product, t.delta FROM products p JOIN sums t ON t.product_id = p.id
        WHERE t.delta <> 0
    ), totals AS (
        UPDATE products p SET quantity = p.quantity + b.delta
        FROM before b
        WHERE p.id = b.id
        RETURNING p.id, product_json(p) AS product, product_changed_fields(b.product, p) AS changed
    ), logged AS (
        -- FULL JOIN, and nothing filtering either side (a filter would let the planner make
        -- it a left join): two row sets meet by hash or merge, never a nested loop, as the
        -- plan kept from a session's first one-row statement also runs statements of up to
        -- 32 movements. Every product in totals has movements here, so no row lacks its
        -- movement.
        INSERT INTO product_change_events (stmt, k, type, product_id, product, changed,
                                           movement_id)
        SELECT (SELECT nextval('product_change_statements')), row_number() OVER (ORDER BY m.id),
               'product.updated', m.product_id, coalesce(t.product, product_json(p)),
               coalesce(t.changed, '{}'), m.id
        FROM new_rows m FULL JOIN totals t ON t.id = m.product_id
            LEFT JOIN products p ON p.id = m.product_id AND t.id IS NULL
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM stocked),
           (SELECT min(m.product_id) FROM new_rows m
            WHERE NOT EXISTS (SELECT FROM present x WHERE x.id = m.product_id))
$sql$;
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION stock_movements_apply() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$body$
DECLARE
    groups bigint;
    applied bigint;
    missing bigint;
    nestloop text;
BEGIN
    IF (SELECT count(*) FROM (SELECT FROM new_rows LIMIT 33) m) <= 32 THEN
%1$s    INTO groups, applied, missing;
    ELSE
        IF (SELECT stock_tables_misjudged(count(DISTINCT (m.product_id, lower(m.location))),
                                          count(DISTINCT m.product_id))
            FROM new_rows m) THEN
            nestloop := current_setting('enable_nestloop');
            PERFORM set_config('enable_nestloop', 'off', true);
        END IF;
        EXECUTE %2$L INTO groups, applied, missing;
        IF nestloop IS NOT NULL THEN
            PERFORM set_config('enable_nestloop', nestloop, true);
        END IF;
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'product %% does not exist', missing
            USING ERRCODE = 'foreign_key_violation', TABLE = 'stock_movements',
                  COLUMN = 'product_id', CONSTRAINT = 'stock_movements_product_exists';
    END IF;
    IF applied <> groups THEN
        RAISE EXCEPTION 'stock movements that do not follow the stock they move'
            USING ERRCODE = 'integrity_constraint_violation', TABLE = 'stock_movements',
                  CONSTRAINT = 'stock_movements_follow_stock',
                  DETAIL = 'At each location, quantity_after must be the quantity there plus '
                           'the delta (a running sum in id order), at a location that exists '
                           'and where the product has a stock row.',
                  HINT = 'adjust_stock(sku, delta, reason, note, location) writes movements '
                         'that do.';
    END IF;
    RETURN NULL;
END
$body$
$fn$, apply, apply);
END
$do$;

CREATE OR REPLACE TRIGGER stock_movements_apply
    AFTER INSERT ON stock_movements REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stock_movements_apply();

-- The psql way to move stock, with exactly the rules of POST /products/{sku}/adjustments
-- (which calls it): the product and the location by any letter case, the stock row locked,
-- the location never left with fewer units than it has reserved. Returns the product as the
-- API shows it. Errors a client can tell apart: no_data_found naming the table (products or
-- locations); check_violation of product_stock_reserved_check with DETAIL 'available=N';
-- numeric_value_out_of_range when a quantity would pass 2147483647.
CREATE OR REPLACE FUNCTION adjust_stock(sku text, delta integer, reason text,
                                        note text DEFAULT NULL, location text DEFAULT 'MAIN')
    RETURNS json
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    found_id bigint;
    place locations;
    stock product_stock;
    result products;
BEGIN
    -- KEY SHARE: a concurrent DELETE of the product waits for this adjustment.
    SELECT p.id INTO found_id FROM products p
    WHERE lower(p.sku) = lower(adjust_stock.sku) FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'product % does not exist', adjust_stock.sku
            USING ERRCODE = 'no_data_found', TABLE = 'products';
    END IF;
    SELECT l.* INTO place FROM locations l WHERE lower(l.code) = lower(adjust_stock.location)
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'location % does not exist', adjust_stock.location
            USING ERRCODE = 'no_data_found', TABLE = 'locations';
    END IF;
    INSERT INTO product_stock AS s (product_id, location_id) VALUES (found_id, place.id)
    ON CONFLICT DO NOTHING;
    SELECT s.* INTO stock FROM product_stock s
    WHERE s.product_id = found_id AND s.location_id = place.id FOR UPDATE;
    IF adjust_stock.delta < 0 AND stock.reserved > 0 THEN
        -- Units held only by expired reservations are not held: they end first.
        PERFORM reservations_expire_for(ARRAY[found_id]);
        SELECT s.* INTO stock FROM product_stock s
        WHERE s.product_id = found_id AND s.location_id = place.id;
    END IF;
    IF stock.quantity::bigint + adjust_stock.delta < stock.reserved THEN
        RAISE EXCEPTION 'not enough stock of % at %', adjust_stock.sku, place.code
            USING ERRCODE = 'check_violation', TABLE = 'product_stock',
                  CONSTRAINT = 'product_stock_reserved_check',
                  DETAIL = format('available=%s', stock.available);
    END IF;
    INSERT INTO stock_movements (product_id, location, delta, reason, note, quantity_after)
    VALUES (found_id, place.code, adjust_stock.delta, adjust_stock.reason, adjust_stock.note,
            stock.quantity + adjust_stock.delta);
    SELECT p.* INTO result FROM products p WHERE p.id = found_id;
    RETURN product_json(result);
END
$$;

-- Moving stock between locations: two movements (reason transfer) in one statement, so the
-- product's totals, its updated_at and its ETag stay; the transfer itself is recorded with
-- the SKU and codes as they were.
CREATE TABLE IF NOT EXISTS stock_transfers (
    id            bigint      GENERATED ALWAYS AS IDENTITY
                              CONSTRAINT stock_transfers_pkey PRIMARY KEY,
    -- No foreign keys, as for movements: a transfer stays when its product or a location goes.
    product_id    bigint      NOT NULL,
    sku           text        NOT NULL,
    from_location text        NOT NULL,
    to_location   text        NOT NULL,
    quantity      integer     NOT NULL
                              CONSTRAINT stock_transfers_quantity_check CHECK (quantity >= 1),
    note          text
                              CONSTRAINT stock_transfers_note_length_check
                              CHECK (char_length(note) <= 500),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_transfers_locations_check CHECK (lower(from_location) <> lower(to_location))
);

DO $$
BEGIN
    IF to_regtype('location_api') IS NULL THEN
        CREATE TYPE location_api AS (code text, name text, created_at text, updated_at text);
    END IF;
    IF to_regtype('stock_level_api') IS NULL THEN
        CREATE TYPE stock_level_api AS (
            location text, quantity integer, reserved integer, available integer);
    END IF;
    IF to_regtype('product_stock_api') IS NULL THEN
        CREATE TYPE product_stock_api AS (
            sku text, quantity integer, reserved integer, available integer, locations json);
    END IF;
    IF to_regtype('location_stock_api') IS NULL THEN
        CREATE TYPE location_stock_api AS (
            sku text, quantity integer, reserved integer, available integer);
    END IF;
    IF to_regtype('transfer_api') IS NULL THEN
        CREATE TYPE transfer_api AS (
            id bigint, sku text, "from" text, "to" text, quantity integer, note text,
            created_at text);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION location_json(l locations) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        l.code,
        l.name,
        to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(l.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::location_api)
$$;

-- GET /products/{sku}/stock: the totals and every location holding units or reservations,
-- by code (array_to_json: compact, as every other representation).
CREATE OR REPLACE FUNCTION product_stock_json(p products) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        p.sku, p.quantity, p.reserved, p.available,
        coalesce((SELECT array_to_json(array_agg(
                             ROW(l.code, s.quantity, s.reserved, s.available)::stock_level_api
                             ORDER BY lower(l.code)))
                  FROM product_stock s JOIN locations l ON l.id = s.location_id
                  WHERE s.product_id = p.id AND (s.quantity <> 0 OR s.reserved <> 0)),
                 '[]')
    )::product_stock_api)
$$;

-- A row of GET /locations/{code}/stock.
CREATE OR REPLACE FUNCTION location_stock_json(p products, s product_stock) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(p.sku, s.quantity, s.reserved, s.available)::location_stock_api)
$$;

CREATE OR REPLACE FUNCTION transfer_json(t stock_transfers) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        t.id, t.sku, t.from_location, t.to_location, t.quantity, t.note,
        to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::transfer_api)
$$;

-- POST /transfers, and the psql way: n units of a product from one location to another.
-- The two stock rows are locked in location id order, so concurrent transfers between the
-- same two locations in opposite directions cannot deadlock. Errors as adjust_stock's;
-- the same location twice is invalid_parameter_value.
CREATE OR REPLACE FUNCTION transfer_stock(sku text, from_location text, to_location text,
                                          quantity integer, note text DEFAULT NULL)
    RETURNS json
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    item products;
    source locations;
    target locations;
    taken product_stock;
    given product_stock;
    made stock_transfers;
BEGIN
    SELECT p.* INTO item FROM products p
    WHERE lower(p.sku) = lower(transfer_stock.sku) FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'product % does not exist', transfer_stock.sku
            USING ERRCODE = 'no_data_found', TABLE = 'products';
    END IF;
    SELECT l.* INTO source FROM locations l WHERE lower(l.code) = lower(from_location)
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'location % does not exist', from_location
            USING ERRCODE = 'no_data_found', TABLE = 'locations', COLUMN = 'from';
    END IF;
    SELECT l.* INTO target FROM locations l WHERE lower(l.code) = lower(to_location)
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'location % does not exist', to_location
            USING ERRCODE = 'no_data_found', TABLE = 'locations', COLUMN = 'to';
    END IF;
    IF source.id = target.id THEN
        RAISE EXCEPTION 'a transfer needs two different locations'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'to';
    END IF;
    INSERT INTO product_stock (product_id, location_id)
    VALUES (item.id, source.id), (item.id, target.id) ON CONFLICT DO NOTHING;
    PERFORM FROM product_stock s
    WHERE s.product_id = item.id AND s.location_id IN (source.id, target.id)
    ORDER BY s.location_id FOR UPDATE;
    SELECT s.* INTO taken FROM product_stock s
    WHERE s.product_id = item.id AND s.location_id = source.id;
    IF taken.reserved > 0 THEN
        PERFORM reservations_expire_for(ARRAY[item.id]);
        SELECT s.* INTO taken FROM product_stock s
        WHERE s.product_id = item.id AND s.location_id = source.id;
    END IF;
    SELECT s.* INTO given FROM product_stock s
    WHERE s.product_id = item.id AND s.location_id = target.id;
    IF taken.available < transfer_stock.quantity THEN
        RAISE EXCEPTION 'not enough stock of % at %', item.sku, source.code
            USING ERRCODE = 'check_violation', TABLE = 'product_stock',
                  CONSTRAINT = 'product_stock_reserved_check',
                  DETAIL = format('available=%s', taken.available);
    END IF;
    INSERT INTO stock_movements (product_id, location, delta, reason, note, quantity_after)
    VALUES (item.id, source.code, -transfer_stock.quantity, 'transfer', transfer_stock.note,
            taken.quantity - transfer_stock.quantity),
           (item.id, target.code, transfer_stock.quantity, 'transfer', transfer_stock.note,
            given.quantity + transfer_stock.quantity);
    INSERT INTO stock_transfers (product_id, sku, from_location, to_location, quantity, note)
    VALUES (item.id, item.sku, source.code, target.code, transfer_stock.quantity,
            transfer_stock.note)
    RETURNING * INTO made;
    RETURN transfer_json(made);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Reservations: units held for an order, never more than a location has.
-- ---------------------------------------------------------------------------------------
--
-- product_stock.reserved is, at every location, the sum of the allocations of the active
-- reservations there: the triggers below add an allocation when it is written (for an active
-- reservation) and take all of a reservation's away when it stops being active, in the same
-- statement, set-wise, and write the products' change events (changed: reserved,
-- available). Fulfilling first releases, then takes the units out with movements (sold), so
-- the CHECK 0 <= reserved <= quantity holds at every step.
CREATE TABLE IF NOT EXISTS reservations (
    id         bigint      GENERATED ALWAYS AS IDENTITY
                           CONSTRAINT reservations_pkey PRIMARY KEY,
    reference  text
                           CONSTRAINT reservations_reference_check
                           CHECK (char_length(reference) BETWEEN 1 AND 200),
    status     text        NOT NULL DEFAULT 'active'
                           CONSTRAINT reservations_status_check
                           CHECK (status IN ('active', 'fulfilled', 'released', 'expired')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The sweep: the active reservations due, soonest first.
CREATE INDEX IF NOT EXISTS reservations_expires_at_idx
    ON reservations (expires_at) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS reservations_reference_idx
    ON reservations (reference, id);

CREATE TABLE IF NOT EXISTS reservation_lines (
    reservation_id bigint  NOT NULL
                           CONSTRAINT reservation_lines_reservation_id_fkey
                           REFERENCES reservations (id) ON DELETE CASCADE,
    line           integer NOT NULL,
    -- No foreign key: a reservation keeps what it held after its product goes (a product with
    -- active reservations cannot go: products_in_use).
    product_id     bigint  NOT NULL,
    sku            text    NOT NULL,
    quantity       integer NOT NULL
                           CONSTRAINT reservation_lines_quantity_check CHECK (quantity >= 1),
    CONSTRAINT reservation_lines_pkey PRIMARY KEY (reservation_id, line)
);

CREATE INDEX IF NOT EXISTS reservation_lines_product_id_idx
    ON reservation_lines (product_id, reservation_id);

CREATE TABLE IF NOT EXISTS reservation_allocations (
    reservation_id bigint  NOT NULL,
    line           integer NOT NULL,
    product_id     bigint  NOT NULL,
    location_id    bigint  NOT NULL,
    location       text    NOT NULL,
    quantity       integer NOT NULL
                           CONSTRAINT reservation_allocations_quantity_check
                           CHECK (quantity >= 1),
    CONSTRAINT reservation_allocations_pkey PRIMARY KEY (reservation_id, line, location_id),
    CONSTRAINT reservation_allocations_line_fkey FOREIGN KEY (reservation_id, line)
        REFERENCES reservation_lines (reservation_id, line) ON DELETE CASCADE
);

DO $$
BEGIN
    IF to_regtype('reservation_api') IS NULL THEN
        CREATE TYPE allocation_api AS (location text, quantity integer);
        CREATE TYPE reservation_line_api AS (sku text, quantity integer, allocations json);
        CREATE TYPE reservation_api AS (
            id bigint, reference text, status text, expires_at text, created_at text,
            lines json);
    END IF;
END
$$;

-- A reservation as the API shows it. An active one past its expiry holds nothing already (the
-- sweep commits that within seconds): it is shown expired.
CREATE OR REPLACE FUNCTION reservation_json(r reservations) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        r.id,
        r.reference,
        CASE WHEN r.status = 'active' AND r.expires_at <= now() THEN 'expired' ELSE r.status END,
        to_char(r.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        (SELECT array_to_json(array_agg(ROW(
                    l.sku, l.quantity,
                    (SELECT array_to_json(array_agg(ROW(a.location, a.quantity)::allocation_api
                                                    ORDER BY a.quantity DESC, lower(a.location)))
                     FROM reservation_allocations a
                     WHERE a.reservation_id = l.reservation_id AND a.line = l.line)
                )::reservation_line_api ORDER BY l.line))
         FROM reservation_lines l WHERE l.reservation_id = r.id)
    )::reservation_api)
$$;

-- Holds change reserved at the stock rows and the products' totals, and log one event per
-- product. `sign` +1 adds allocations (new rows), -1 takes them away.
CREATE OR REPLACE FUNCTION reservations_apply(held jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    WITH moves AS (
        SELECT (h ->> 'product_id')::bigint AS product_id,
               (h ->> 'location_id')::bigint AS location_id,
               sum((h ->> 'quantity')::integer) AS quantity
        FROM jsonb_array_elements(held) h
        GROUP BY 1, 2
    ), stocked AS (
        UPDATE product_stock s SET reserved = s.reserved + m.quantity
        FROM moves m
        WHERE s.product_id = m.product_id AND s.location_id = m.location_id
        RETURNING s.product_id, m.quantity
    ), sums AS (
        SELECT x.product_id, sum(x.quantity) AS quantity FROM stocked x GROUP BY x.product_id
    ), before AS (
        SELECT p.id, p AS product, t.quantity FROM products p JOIN sums t ON t.product_id = p.id
        WHERE t.quantity <> 0
    ), totals AS (
        UPDATE products p SET reserved = p.reserved + b.quantity
        FROM before b
        WHERE p.id = b.id
        RETURNING p.id, product_json(p) AS product, product_changed_fields(b.product, p) AS changed
    )
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    SELECT (SELECT nextval('product_change_statements')), row_number() OVER (ORDER BY t.id),
           'product.updated', t.id, t.product, t.changed
    FROM totals t;
END
$$;

CREATE OR REPLACE FUNCTION reservation_allocations_held() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    PERFORM reservations_apply((
        SELECT jsonb_agg(jsonb_build_object('product_id', a.product_id,
                                            'location_id', a.location_id,
                                            'quantity', a.quantity))
        FROM new_rows a JOIN reservations r ON r.id = a.reservation_id
        WHERE r.status = 'active'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION reservations_ended() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    PERFORM reservations_apply((
        SELECT jsonb_agg(jsonb_build_object('product_id', a.product_id,
                                            'location_id', a.location_id,
                                            'quantity', -a.quantity))
        -- FULL JOIN and a condition that is not strict (IS TRUE): never a nested loop.
        FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
        LEFT JOIN reservation_allocations a ON a.reservation_id = o.id
        WHERE (o.status = 'active' AND n.status <> 'active' AND a.quantity > 0) IS TRUE));
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER reservation_allocations_held
    AFTER INSERT ON reservation_allocations REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reservation_allocations_held();
CREATE OR REPLACE TRIGGER reservations_ended
    AFTER UPDATE ON reservations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reservations_ended();
CREATE OR REPLACE TRIGGER reservations_touch_updated_at
    BEFORE UPDATE ON reservations
    FOR EACH ROW EXECUTE FUNCTION products_touch_updated_at();

-- What was held stays as it was held; a reservation only ends (never becomes active again).
CREATE OR REPLACE FUNCTION reservations_keep() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_TABLE_NAME = 'reservations' THEN
        RAISE EXCEPTION 'reservation % is %: it cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'integrity_constraint_violation', TABLE = 'reservations',
                  CONSTRAINT = 'reservations_end_once';
    END IF;
    RAISE EXCEPTION 'what a reservation held cannot change: % of % is refused', TG_OP,
                    TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation', TABLE = TG_TABLE_NAME,
              CONSTRAINT = 'reservations_keep';
END
$$;

CREATE OR REPLACE TRIGGER reservations_end_once
    BEFORE UPDATE OF status ON reservations
    FOR EACH ROW WHEN (OLD.status <> 'active' AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION reservations_keep();
CREATE OR REPLACE TRIGGER reservation_allocations_keep
    BEFORE UPDATE OR DELETE ON reservation_allocations
    FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION reservations_keep();
CREATE OR REPLACE TRIGGER reservation_lines_keep
    BEFORE UPDATE OR DELETE ON reservation_lines
    FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION reservations_keep();
-- A reservation that held something goes only once it has ended.
CREATE OR REPLACE FUNCTION reservations_refuse_delete() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'reservation % is active: release it first', OLD.id
        USING ERRCODE = 'integrity_constraint_violation', TABLE = 'reservations',
              CONSTRAINT = 'reservations_keep';
END
$$;
CREATE OR REPLACE TRIGGER reservations_refuse_delete
    BEFORE DELETE ON reservations
    FOR EACH ROW WHEN (OLD.status = 'active')
    EXECUTE FUNCTION reservations_refuse_delete();

-- A product goes only once nothing is held for it (DELETE /products/{sku}: 409 product_in_use).
CREATE OR REPLACE FUNCTION products_in_use() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'product % has active reservations', OLD.sku
        USING ERRCODE = 'restrict_violation', TABLE = 'products', CONSTRAINT = 'products_in_use',
              HINT = 'Release or fulfil them first.';
END
$$;
CREATE OR REPLACE TRIGGER products_in_use
    BEFORE DELETE ON products
    FOR EACH ROW WHEN (OLD.reserved > 0)
    EXECUTE FUNCTION products_in_use();

-- Ends the active reservations past their expiry among `ids` (NULL: any), at most max_rows,
-- skipping those another transaction is ending (SKIP LOCKED: any number of processes share
-- the sweep, none waits). Returns how many it expired.
CREATE OR REPLACE FUNCTION reservations_expire(max_rows integer, ids bigint[] DEFAULT NULL)
    RETURNS integer
    LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS
$$
    WITH due AS (
        SELECT r.id FROM reservations r
        WHERE r.status = 'active' AND r.expires_at <= now()
          AND (ids IS NULL OR r.id = ANY (ids))
        ORDER BY r.expires_at
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), ended AS (
        UPDATE reservations r SET status = 'expired' FROM due WHERE r.id = due.id RETURNING 1
    )
    SELECT count(*)::integer FROM ended
$$;

-- Before a request takes units of these products: the reservations holding them that are
-- past their expiry end now, in the request's transaction, so no request is refused for
-- units only an expired reservation held. Waits for (never skips) one being ended elsewhere.
CREATE OR REPLACE FUNCTION reservations_expire_for(product_ids bigint[]) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS
$$
    UPDATE reservations r SET status = 'expired'
    WHERE r.status = 'active' AND r.expires_at <= now()
      AND r.id IN (SELECT l.reservation_id FROM reservation_lines l
                   WHERE l.product_id = ANY (product_ids))
$$;

-- POST /reservations: holds every line or nothing. `lines`: a JSON array of {sku, quantity,
-- location?}, already added together per (sku, location) in first-appearance order. Lines
-- with a location are held there; the others where units are available, the location with
-- the most available first (ties: code order), over as few locations as it takes, from what
-- the located lines left. The stock rows are locked in (product id, location id) order, so
-- concurrent reservations cannot deadlock. Short lines raise check_violation of
-- product_stock_reserved_check with DETAIL the JSON array of {sku, location, requested,
-- available}; an unknown product or location no_data_found naming the table (and the line's
-- position in DETAIL).
CREATE OR REPLACE FUNCTION reserve_stock(reference text, expires_in integer, lines jsonb)
    RETURNS json
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    wanted record;
    level record;
    made reservations;
    -- The lines (w_*) and what each takes where (t_*), in arrays: no table per request.
    w_product bigint[] := '{}';
    w_sku text[] := '{}';
    w_quantity integer[] := '{}';
    w_location_id bigint[] := '{}';
    w_location text[] := '{}';
    t_line integer[] := '{}';
    t_product bigint[] := '{}';
    t_location_id bigint[] := '{}';
    t_location text[] := '{}';
    t_quantity integer[] := '{}';
    found_id bigint;
    found_sku text;
    place locations;
    short jsonb := '[]';
    left_over integer;
    take integer;
    i integer;
BEGIN
    FOR wanted IN
        SELECT x.value ->> 'sku' AS sku, (x.value ->> 'quantity')::integer AS quantity,
               x.value ->> 'location' AS location
        FROM jsonb_array_elements(lines) WITH ORDINALITY x ORDER BY x.ordinality
    LOOP
        SELECT p.id, p.sku INTO found_id, found_sku FROM products p
        WHERE lower(p.sku) = lower(wanted.sku) FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'product % does not exist', wanted.sku
                USING ERRCODE = 'no_data_found', TABLE = 'products', DETAIL = wanted.sku;
        END IF;
        place := NULL;
        IF wanted.location IS NOT NULL THEN
            SELECT l.* INTO place FROM locations l
            WHERE lower(l.code) = lower(wanted.location) FOR KEY SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'location % does not exist', wanted.location
                    USING ERRCODE = 'no_data_found', TABLE = 'locations',
                          DETAIL = wanted.location;
            END IF;
        END IF;
        w_product := array_append(w_product, found_id);
        w_sku := array_append(w_sku, found_sku);
        w_quantity := array_append(w_quantity, wanted.quantity);
        w_location_id := array_append(w_location_id, place.id);
        w_location := array_append(w_location, place.code);
    END LOOP;

    -- Every stock row of these products, locked in one global order; then the reservations
    -- past their expiry that hold any of them end.
    PERFORM FROM product_stock s WHERE s.product_id = ANY (w_product)
    ORDER BY s.product_id, s.location_id FOR UPDATE;
    PERFORM reservations_expire_for(w_product);

    -- Lines with a location first, then the others, each in its order.
    FOR i IN
        SELECT g.i FROM generate_subscripts(w_product, 1) g(i)
        ORDER BY (w_location_id[g.i] IS NULL), g.i
    LOOP
        left_over := w_quantity[i];
        FOR level IN
            SELECT s.location_id, l.code,
                   s.available - coalesce((SELECT sum(t.q) FROM unnest(t_product, t_location_id,
                                                                         t_quantity) t(p, li, q)
                                           WHERE t.p = s.product_id AND t.li = s.location_id),
                                          0) AS available
            FROM product_stock s JOIN locations l ON l.id = s.location_id
            WHERE s.product_id = w_product[i]
              AND (w_location_id[i] IS NULL OR s.location_id = w_location_id[i])
            ORDER BY 3 DESC, lower(l.code)
        LOOP
            EXIT WHEN left_over = 0 OR level.available <= 0;
            take := least(left_over, level.available);
            t_line := array_append(t_line, i);
            t_product := array_append(t_product, w_product[i]);
            t_location_id := array_append(t_location_id, level.location_id);
            t_location := array_append(t_location, level.code);
            t_quantity := array_append(t_quantity, take);
            left_over := left_over - take;
        END LOOP;
        IF left_over > 0 THEN
            short := short || jsonb_build_object(
                'sku', w_sku[i], 'location', w_location[i], 'requested', w_quantity[i],
                'available', w_quantity[i] - left_over);
        END IF;
    END LOOP;
    IF jsonb_array_length(short) > 0 THEN
        RAISE EXCEPTION 'not enough stock to hold every line'
            USING ERRCODE = 'check_violation', TABLE = 'product_stock',
                  CONSTRAINT = 'product_stock_reserved_check', DETAIL = short::text;
    END IF;

    INSERT INTO reservations (reference, expires_at)
    VALUES (reserve_stock.reference, now() + make_interval(secs => expires_in))
    RETURNING * INTO made;
    INSERT INTO reservation_lines (reservation_id, line, product_id, sku, quantity)
    SELECT made.id, w.n, w.p, w.s, w.q
    FROM unnest(w_product, w_sku, w_quantity) WITH ORDINALITY w(p, s, q, n);
    INSERT INTO reservation_allocations (reservation_id, line, product_id, location_id,
                                         location, quantity)
    SELECT made.id, t.n, t.p, t.li, t.l, t.q
    FROM unnest(t_line, t_product, t_location_id, t_location, t_quantity) t(n, p, li, l, q);
    RETURN reservation_json(made);
END
$$;

-- Ending a reservation (fulfil, release) or moving its expiry: the reservation locked, an
-- expired one ended first; one that is not active raises check_violation of
-- reservations_active with DETAIL its status.
CREATE OR REPLACE FUNCTION reservation_change(reservation_id bigint, action text,
                                              expires_in integer DEFAULT NULL)
    RETURNS json
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    held reservations;
    stock_row product_stock;
    alloc record;
BEGIN
    SELECT r.* INTO held FROM reservations r WHERE r.id = reservation_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reservation % does not exist', reservation_id
            USING ERRCODE = 'no_data_found', TABLE = 'reservations';
    END IF;
    IF held.status = 'active' AND held.expires_at <= now() THEN
        UPDATE reservations r SET status = 'expired' WHERE r.id = held.id RETURNING * INTO held;
    END IF;
    IF held.status <> 'active' THEN
        RAISE EXCEPTION 'reservation % is %', held.id, held.status
            USING ERRCODE = 'check_violation', TABLE = 'reservations',
                  CONSTRAINT = 'reservations_active', DETAIL = held.status;
    END IF;
    IF action = 'extend' THEN
        UPDATE reservations r SET expires_at = now() + make_interval(secs => expires_in)
        WHERE r.id = held.id RETURNING * INTO held;
    ELSIF action = 'release' THEN
        UPDATE reservations r SET status = 'released' WHERE r.id = held.id RETURNING * INTO held;
    ELSIF action = 'fulfil' THEN
        -- The stock rows in the global order, then the hold ends, then the units leave.
        PERFORM FROM product_stock s JOIN reservation_allocations a
            ON a.product_id = s.product_id AND a.location_id = s.location_id
        WHERE a.reservation_id = held.id
        ORDER BY s.product_id, s.location_id FOR UPDATE OF s;
        UPDATE reservations r SET status = 'fulfilled' WHERE r.id = held.id RETURNING * INTO held;
        INSERT INTO stock_movements (product_id, location, delta, reason, note, quantity_after)
        SELECT a.product_id, a.location, -a.quantity, 'sold', 'reservation ' || held.id,
               s.quantity - sum(a.quantity) OVER (PARTITION BY a.product_id, a.location_id
                                                  ORDER BY a.line)
        FROM reservation_allocations a
        JOIN product_stock s ON s.product_id = a.product_id AND s.location_id = a.location_id
        WHERE a.reservation_id = held.id
        ORDER BY a.product_id, a.location_id, a.line;
    ELSE
        RAISE EXCEPTION 'unknown action %', action USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN reservation_json(held);
END
$$;

COMMENT ON TABLE reservations IS
    'Units held for an order (POST /reservations) until fulfilled, released or expired.';
COMMENT ON COLUMN reservations.status IS
    'active (holding), fulfilled (the units left stock), released or expired (given back).';
COMMENT ON COLUMN reservations.expires_at IS
    'From then on it holds nothing; the sweep marks it expired within seconds.';
COMMENT ON TABLE reservation_lines IS 'What a reservation asked for, one row per SKU (and location).';
COMMENT ON TABLE reservation_allocations IS
    'Where each line is held: units per location. While the reservation is active, '
    'product_stock.reserved is their sum at each location.';
COMMENT ON CONSTRAINT reservations_pkey ON reservations IS 'One row per reservation.';
COMMENT ON INDEX reservations_pkey IS 'The index of reservations_pkey: a reservation by id.';
COMMENT ON CONSTRAINT reservations_reference_check ON reservations IS
    'Reference: 1-200 characters (NULL: none).';
COMMENT ON CONSTRAINT reservations_status_check ON reservations IS
    'Status: active, fulfilled, released or expired.';
COMMENT ON INDEX reservations_expires_at_idx IS
    'The expiry sweep: active reservations by expiry, soonest first.';
COMMENT ON INDEX reservations_reference_idx IS 'GET /reservations?reference=: by reference.';
COMMENT ON CONSTRAINT reservation_lines_pkey ON reservation_lines IS
    'One row per line of a reservation, in request order.';
COMMENT ON INDEX reservation_lines_pkey IS 'The index of reservation_lines_pkey.';
COMMENT ON CONSTRAINT reservation_lines_reservation_id_fkey ON reservation_lines IS
    'A line belongs to its reservation.';
COMMENT ON CONSTRAINT reservation_lines_quantity_check ON reservation_lines IS
    'A line holds at least one unit.';
COMMENT ON INDEX reservation_lines_product_id_idx IS
    'A product''s reservations: GET /reservations?sku= and expiring those holding its units.';
COMMENT ON CONSTRAINT reservation_allocations_pkey ON reservation_allocations IS
    'One row per line and location.';
COMMENT ON INDEX reservation_allocations_pkey IS 'The index of reservation_allocations_pkey.';
COMMENT ON CONSTRAINT reservation_allocations_line_fkey ON reservation_allocations IS
    'An allocation belongs to its line.';
COMMENT ON CONSTRAINT reservation_allocations_quantity_check ON reservation_allocations IS
    'An allocation holds at least one unit.';
COMMENT ON FUNCTION reserve_stock(text, integer, jsonb) IS
    'Holds every line or nothing, the way POST /reservations does; returns it as JSON.';
COMMENT ON FUNCTION reservation_change(bigint, text, integer) IS
    'fulfil, release or extend an active reservation; returns it as JSON.';
COMMENT ON FUNCTION reservations_expire(integer, bigint[]) IS
    'Marks due active reservations expired (SKIP LOCKED); returns how many.';

GRANT SELECT, INSERT, UPDATE ON reservations TO inventory_rw;
GRANT SELECT, INSERT ON reservation_lines, reservation_allocations TO inventory_rw;
GRANT EXECUTE ON FUNCTION reserve_stock(text, integer, jsonb),
    reservation_change(bigint, text, integer), reservations_expire(integer, bigint[]),
    reservations_expire_for(bigint[]), reservation_json(reservations) TO inventory_rw;
REVOKE EXECUTE ON FUNCTION reservations_apply(jsonb), reservation_allocations_held(),
    reservations_ended() FROM PUBLIC;

-- Upgrade from the release before locations: every product's quantity becomes its stock in
-- MAIN, where every movement already is (the column's default). Run once, when the stock
-- table is new; replica mode skips the guards, which would refuse a quantity written without
-- its movement: these quantities were already explained by the ledger.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM product_stock) THEN
        PERFORM set_config('session_replication_role', 'replica', true);
        INSERT INTO product_stock (product_id, location_id, quantity)
        SELECT p.id, 0, p.quantity FROM products p WHERE p.quantity <> 0;
        PERFORM set_config('session_replication_role', 'origin', true);
    END IF;
END
$$;

COMMENT ON TABLE locations IS
    'Places that hold stock (a warehouse, a store, a van). MAIN (id 0) always exists.';
COMMENT ON COLUMN locations.id IS 'Identity; MAIN is 0.';
COMMENT ON COLUMN locations.code IS
    'Code: 1-64 of [A-Za-z0-9._-], starting alphanumeric; unique ignoring case; never changes.';
COMMENT ON COLUMN locations.name IS 'Display name: 1-200 characters, not blank.';
COMMENT ON COLUMN locations.created_at IS 'When the row was inserted (set by the database).';
COMMENT ON COLUMN locations.updated_at IS 'When the row last changed (set by the database).';
COMMENT ON CONSTRAINT locations_pkey ON locations IS 'One row per id; MAIN is 0.';
COMMENT ON CONSTRAINT locations_code_format_check ON locations IS
    'Code: 1-64 characters, a letter or digit first, then letters, digits, ".", "_" or "-".';
COMMENT ON CONSTRAINT locations_name_check ON locations IS
    'Name: 1-200 characters, not blank or whitespace only.';
COMMENT ON INDEX locations_pkey IS 'The index of locations_pkey: a location by id.';
COMMENT ON INDEX locations_code_lower_key IS
    'Codes are unique ignoring case (409 duplicate_location); also a location by code.';
COMMENT ON INDEX locations_created_at_id_idx IS
    'The list order of GET /locations (oldest first) and the keyset of its pages.';
COMMENT ON TABLE product_stock IS
    'Units on hand and reserved per product and location; written only by the ledger''s '
    'triggers. A product with no row at a location has nothing there.';
COMMENT ON COLUMN product_stock.product_id IS 'The product (its stock goes when it goes).';
COMMENT ON COLUMN product_stock.location_id IS 'The location (locations.id).';
COMMENT ON COLUMN product_stock.quantity IS 'Units on hand at the location.';
COMMENT ON COLUMN product_stock.reserved IS 'Units held there by active reservations.';
COMMENT ON COLUMN product_stock.available IS 'quantity - reserved: what can still be taken there.';
COMMENT ON CONSTRAINT product_stock_reserved_check ON product_stock IS
    'Never oversold: 0 <= reserved <= quantity at every location (409 insufficient_stock).';
COMMENT ON CONSTRAINT product_stock_pkey ON product_stock IS 'One row per product and location.';
COMMENT ON CONSTRAINT product_stock_product_id_fkey ON product_stock IS
    'Stock belongs to a product and goes with it (its movements stay).';
COMMENT ON CONSTRAINT product_stock_location_id_fkey ON product_stock IS
    'Stock is at a location; a location goes only once its rows hold nothing (locations_guard).';
COMMENT ON INDEX product_stock_pkey IS 'The index of product_stock_pkey: a product''s stock by location.';
COMMENT ON INDEX product_stock_location_id_product_id_idx IS
    'The stock at a location, and whether a location is in use.';
COMMENT ON FUNCTION adjust_stock(text, integer, text, text, text) IS
    'Moves stock the way POST /products/{sku}/adjustments does: adjust_stock(sku, delta, reason, '
    'note, location); returns the product as JSON.';
COMMENT ON FUNCTION stock_movements_apply() IS
    'The ledger''s trigger: applies a statement''s movements, checks them, logs their events.';
COMMENT ON FUNCTION stock_through_ledger() IS
    'Refuses a write of stored quantities that does not come from the ledger.';

COMMENT ON TABLE stock_transfers IS
    'Stock moved between locations (POST /transfers): each is two movements, reason transfer.';
COMMENT ON COLUMN stock_transfers.sku IS 'The product''s SKU as it was.';
COMMENT ON COLUMN stock_transfers.from_location IS 'The code stock left, as it was.';
COMMENT ON COLUMN stock_transfers.to_location IS 'The code stock arrived at, as it was.';
COMMENT ON CONSTRAINT stock_transfers_pkey ON stock_transfers IS 'One row per transfer.';
COMMENT ON INDEX stock_transfers_pkey IS 'The index of stock_transfers_pkey: a transfer by id.';
COMMENT ON CONSTRAINT stock_transfers_quantity_check ON stock_transfers IS
    'A transfer moves at least one unit.';
COMMENT ON CONSTRAINT stock_transfers_note_length_check ON stock_transfers IS
    'Note: at most 500 characters (NULL: none).';
COMMENT ON CONSTRAINT stock_transfers_locations_check ON stock_transfers IS
    'A transfer is between two different locations.';
COMMENT ON FUNCTION transfer_stock(text, text, text, integer, text) IS
    'Moves stock the way POST /transfers does: transfer_stock(sku, from, to, quantity, note); '
    'returns the transfer as JSON.';
COMMENT ON FUNCTION product_stock_json(products) IS
    'GET /products/{sku}/stock: the totals and the stock at every location holding some.';

GRANT SELECT, INSERT, UPDATE, DELETE ON locations TO inventory_rw;
GRANT SELECT, INSERT ON stock_transfers TO inventory_rw;
GRANT EXECUTE ON FUNCTION transfer_stock(text, text, text, integer, text) TO inventory_rw;
-- Writers lock stock rows (FOR UPDATE needs UPDATE) and create them empty; the guards keep
-- every quantity to the ledger.
GRANT SELECT, INSERT, UPDATE ON product_stock TO inventory_rw;
GRANT EXECUTE ON FUNCTION adjust_stock(text, integer, text, text, text) TO inventory_rw;
REVOKE EXECUTE ON FUNCTION stock_movements_apply(), products_stock_created() FROM PUBLIC;

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
-- (The release before reservations had no reserved column: its view is replaced.)
DO $$
BEGIN
    IF to_regclass('stock_summary') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute
                       WHERE attrelid = to_regclass('stock_summary')
                         AND attname = 'reserved') THEN
        DROP VIEW stock_summary;
    END IF;
END
$$;
CREATE OR REPLACE VIEW stock_summary AS
SELECT count(*)                                           AS products,
       coalesce(sum(quantity::bigint), 0)                 AS units,
       coalesce(sum(reserved::bigint), 0)                 AS reserved,
       round(coalesce(sum(price * quantity), 0), 2)       AS value,
       count(*) FILTER (WHERE quantity = 0)               AS out_of_stock,
       count(*) FILTER (WHERE available <= reorder_point) AS low_stock,
       statement_timestamp()                              AS as_of
FROM products;

-- The same summary from each product's units at one location (none there counts as 0):
-- products still counts every product. NULL rows when no location has the code.
CREATE OR REPLACE FUNCTION stock_summary_at(location_code text)
    RETURNS TABLE (products bigint, units numeric, reserved numeric, value numeric,
                   out_of_stock bigint, low_stock bigint, as_of timestamptz)
    LANGUAGE sql STABLE AS
$$
    SELECT count(p.id),
           coalesce(sum(coalesce(s.quantity, 0)::bigint), 0),
           coalesce(sum(coalesce(s.reserved, 0)::bigint), 0),
           round(coalesce(sum(p.price * coalesce(s.quantity, 0)), 0), 2),
           count(p.id) FILTER (WHERE coalesce(s.quantity, 0) = 0),
           count(p.id) FILTER (WHERE coalesce(s.available, 0) <= p.reorder_point),
           statement_timestamp()
    FROM locations l
    LEFT JOIN products p ON true
    LEFT JOIN product_stock s ON s.product_id = p.id AND s.location_id = l.id
    WHERE lower(l.code) = lower(location_code)
    GROUP BY l.id
$$;

COMMENT ON VIEW stock_summary IS
    'The stock at a glance, one row from one snapshot (GET /reports/stock).';
COMMENT ON COLUMN stock_summary.products IS 'Number of products.';
COMMENT ON COLUMN stock_summary.units IS 'Sum of quantities.';
COMMENT ON COLUMN stock_summary.reserved IS 'Sum of reserved units.';
COMMENT ON COLUMN stock_summary.value IS 'Sum of price * quantity, exact, 2 decimals.';
COMMENT ON COLUMN stock_summary.out_of_stock IS 'Products with quantity 0.';
COMMENT ON COLUMN stock_summary.low_stock IS
    'Products with available <= reorder_point (a NULL reorder point is never low).';
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
COMMENT ON FUNCTION stock_summary_at(text) IS
    'stock_summary from the units at one location (GET /reports/stock?location=); no row when '
    'no location has the code.';
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
GRANT SELECT ON products, stock_movements, stock_summary, movement_daily, locations,
    product_stock, stock_transfers, reservations, reservation_lines, reservation_allocations
    TO inventory_reader;
GRANT EXECUTE ON FUNCTION product_json(products), product_etag(products),
    movement_json(stock_movements), movement_daily(timestamptz, timestamptz) TO inventory_reader;

-- ---------------------------------------------------------------------------------------
-- The change log (GET /changes, GET /changes/stream) and webhooks.
-- ---------------------------------------------------------------------------------------
--
-- How it is kept (docs/changelog.md has the measurements behind each choice):
--   write   Statement-level triggers insert one event per changed product, or per stock
--           movement, in the transaction that made the change: insert-only rows keyed
--           (stmt, k), the writing statement's number and the event's place in it. Nothing
--           is updated later and nothing is notified (a NOTIFY serialises commits).
--   number  product_changes_sequence() (one caller at a time, any process or psql) gives the
--           events of each committed statement the next seq numbers, in statement order: one
--           row in product_change_batches per statement, however many events it wrote.
--   read    product_changes_page(after, n): seq = the batch's first seq + k - 1.
--
-- Why a reader following `seq > after` sees every committed change exactly once: a statement
-- is numbered only once its transaction has committed, numbers only grow, and each run of
-- the sequencer commits as a whole. A statement that commits late is numbered after what was
-- served before it, never skipped. Per product, the order of the changes: a statement takes
-- its number while it holds the product's row lock, so a later change of that product (which
-- had to wait for the earlier transaction to commit) has a larger number, and is visible to
-- the sequencer only when the earlier one is too.

-- The statement numbers: taken when a statement's first event is written (its rows locked).
-- No cache: numbers are handed out in the order they are asked for, across sessions.
CREATE SEQUENCE IF NOT EXISTS product_change_statements AS bigint CACHE 1;

CREATE TABLE IF NOT EXISTS product_change_events (
    stmt        bigint      NOT NULL,
    k           integer     NOT NULL,
    type        text        NOT NULL
                            CONSTRAINT product_change_events_type_check
                            CHECK (type IN ('product.created', 'product.updated',
                                            'product.deleted')),
    product_id  bigint      NOT NULL,
    product     json        NOT NULL,
    changed     text[]      NOT NULL,
    -- The ledger row this change is (GET /products/{sku}/movements shows it the same way).
    movement_id bigint,
    at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT product_change_events_pkey PRIMARY KEY (stmt, k)
);

-- The sequencer's look for new statements: one entry per statement, however many events it
-- wrote, so a statement still in flight costs one invisible entry, not one per row.
CREATE INDEX IF NOT EXISTS product_change_events_statement_idx
    ON product_change_events (stmt) WHERE k = 1;

-- One row per numbered statement: its events are seq last_seq - events + 1 .. last_seq.
CREATE TABLE IF NOT EXISTS product_change_batches (
    last_seq bigint      NOT NULL CONSTRAINT product_change_batches_pkey PRIMARY KEY,
    stmt     bigint      NOT NULL CONSTRAINT product_change_batches_stmt_key UNIQUE,
    events   integer     NOT NULL CONSTRAINT product_change_batches_events_check CHECK (events >= 1),
    -- When the statement's transaction made the change (its events' `at`).
    at       timestamptz NOT NULL
);

-- Where the sequencer stands: every statement number up to `high` has been looked at; the
-- `holes` below it were not visible then (in flight, or rolled back). Once every transaction
-- older than a hole's `holes_until` has ended, a hole still not visible never will be.
CREATE TABLE IF NOT EXISTS product_changes_sequencer (
    one         boolean  NOT NULL DEFAULT true
                         CONSTRAINT product_changes_sequencer_pkey PRIMARY KEY
                         CONSTRAINT product_changes_sequencer_one_check CHECK (one),
    high        bigint   NOT NULL DEFAULT 0,
    holes       bigint[] NOT NULL DEFAULT '{}',
    holes_until bigint[] NOT NULL DEFAULT '{}',
    CONSTRAINT product_changes_sequencer_holes_check
        CHECK (cardinality(holes) = cardinality(holes_until))
);

-- Retention removes the oldest events in seq order; every seq <= through is gone, every
-- seq > through is kept. One row. retention_days is the owner's floor: no caller of
-- product_changes_purge() may keep less (the API promises a trail no client can erase).
CREATE TABLE IF NOT EXISTS product_changes_purged (
    one     boolean NOT NULL DEFAULT true
                    CONSTRAINT product_changes_purged_pkey PRIMARY KEY
                    CONSTRAINT product_changes_purged_one_check CHECK (one),
    through bigint  NOT NULL DEFAULT 0
);
ALTER TABLE product_changes_purged ADD COLUMN IF NOT EXISTS retention_days integer NOT NULL
    DEFAULT 30;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'product_changes_purged'::regclass
                     AND conname = 'product_changes_purged_retention_days_check') THEN
        ALTER TABLE product_changes_purged ADD CONSTRAINT product_changes_purged_retention_days_check
            CHECK (retention_days >= 1);
    END IF;
END
$$;
INSERT INTO product_changes_purged DEFAULT VALUES ON CONFLICT DO NOTHING;

-- The newest seq given (0 before the first): a subscription starts after it.
CREATE OR REPLACE FUNCTION product_changes_last_seq() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT coalesce((SELECT last_seq FROM product_change_batches ORDER BY last_seq DESC LIMIT 1),
                    (SELECT through FROM product_changes_purged), 0)
$$;

-- Webhooks: the subscriptions, each with its cursor into the log; the deliveries to retry;
-- the log of attempts. Nothing is queued per event: each subscription is served on its own
-- (a lease, see webhook_lease) from its cursor, so events cost webhooks nothing until they
-- are delivered, and a receiver that hangs holds up its own subscription only.
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
-- The cursor: every event with seq <= after has had its first attempt (or been given up). A
-- new subscription starts at the newest event: it gets what is numbered after it was made.
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS after bigint NOT NULL
    DEFAULT product_changes_last_seq();
-- The lease: the process serving the subscription now holds token until lease_until.
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS lease_token uuid;
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS lease_until timestamptz;
-- When a process last took it up: the least recently served goes first.
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS served_at timestamptz;

-- Deliveries that failed and will be tried again, until give_up_at (the event's time + 24 h).
CREATE TABLE IF NOT EXISTS webhook_retries (
    webhook_id      bigint      NOT NULL
                                CONSTRAINT webhook_retries_webhook_id_fkey
                                REFERENCES webhooks (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL,
    -- Attempts made so far; the next one is attempt attempts + 1.
    attempts        integer     NOT NULL
                                CONSTRAINT webhook_retries_attempts_check CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    give_up_at      timestamptz NOT NULL,
    CONSTRAINT webhook_retries_pkey PRIMARY KEY (webhook_id, seq)
);

-- A subscription's due retries, oldest due first.
CREATE INDEX IF NOT EXISTS webhook_retries_webhook_id_next_attempt_at_idx
    ON webhook_retries (webhook_id, next_attempt_at);
-- When the next retry of any subscription falls due; and where retention must stop.
CREATE INDEX IF NOT EXISTS webhook_retries_next_attempt_at_idx
    ON webhook_retries (next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_retries_seq_idx
    ON webhook_retries (seq);

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
    -- An attempt is logged once, by the process that made it; seq first for retention.
    CONSTRAINT webhook_attempts_seq_webhook_id_attempt_key UNIQUE (seq, webhook_id, attempt)
);

-- GET /webhooks/{id}/deliveries, newest first; also serves the cascade from webhooks.
CREATE INDEX IF NOT EXISTS webhook_attempts_webhook_id_id_idx
    ON webhook_attempts (webhook_id, id);

-- Upgrade from the release whose log was one table (product_changes) written by triggers and
-- numbered by UPDATEs, with a delivery queued per (subscription, event): the events keep
-- their seq (what the sequencer had not numbered yet is numbered here first, as it would
-- have been), each becoming a one-event statement; queued deliveries become retries, due
-- when they were; subscriptions continue after the newest event. Writers wait meanwhile.
DO $$
DECLARE
    top bigint;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('product_changes')) IS DISTINCT
       FROM 'r' THEN
        RETURN;
    END IF;
    LOCK TABLE products, stock_movements IN SHARE ROW EXCLUSIVE MODE;
    PERFORM pg_advisory_xact_lock('product_changes'::regclass::oid::integer, 1);
    EXECUTE $migrate$
        WITH unnumbered AS (
            SELECT id, row_number() OVER (ORDER BY id) AS n FROM product_changes WHERE seq IS NULL
        ), mark AS (
            SELECT coalesce((SELECT max(seq) FROM product_changes),
                            (SELECT max(through) FROM product_changes_purged), 0) AS top
        )
        UPDATE product_changes c SET seq = mark.top + u.n, sequenced_at = clock_timestamp()
        FROM unnumbered u, mark
        WHERE c.id = u.id
    $migrate$;
    EXECUTE $migrate$
        WITH old AS MATERIALIZED (
            SELECT c.*, nextval('product_change_statements') AS stmt
            FROM (SELECT * FROM product_changes ORDER BY seq) c
        ), events AS (
            INSERT INTO product_change_events (stmt, k, type, product_id, product, changed,
                                               movement_id, at)
            SELECT stmt, 1, type, product_id, product, coalesce(changed, '{}'),
                   (movement ->> 'id')::bigint, at
            FROM old
        )
        INSERT INTO product_change_batches (last_seq, stmt, events, at)
        SELECT seq, stmt, 1, at FROM old
    $migrate$;
    INSERT INTO product_changes_sequencer (high)
    VALUES ((SELECT coalesce(max(stmt), 0) FROM product_change_batches))
    ON CONFLICT (one) DO UPDATE SET high = excluded.high;
    top := product_changes_last_seq();
    EXECUTE $migrate$
        INSERT INTO webhook_retries (webhook_id, seq, attempts, next_attempt_at, give_up_at)
        SELECT d.webhook_id, d.seq, d.attempts, d.next_attempt_at, b.at + interval '24 hours'
        FROM webhook_deliveries d JOIN product_change_batches b ON b.last_seq = d.seq
        ON CONFLICT DO NOTHING
    $migrate$;
    UPDATE webhooks SET after = top;
    DROP TRIGGER IF EXISTS product_changes_log_insert ON products;
    DROP TRIGGER IF EXISTS product_changes_log_update ON products;
    DROP TRIGGER IF EXISTS product_changes_log_delete ON products;
    DROP TRIGGER IF EXISTS product_changes_log_movement ON stock_movements;
    DROP FUNCTION IF EXISTS product_changes_log_insert(), product_changes_log_update(),
        product_changes_log_delete(), product_changes_log_movement(),
        product_changes_sequence(integer, boolean), product_changes_purge(integer, integer),
        product_change_json(product_changes),
        webhook_deliveries_claim(integer, integer, bigint[], double precision),
        webhook_delivery_finish(bigint, integer, boolean, integer, text, integer,
                                double precision, interval),
        webhook_delivery_release(bigint, integer);
    DROP TABLE webhook_deliveries;
    DROP TABLE product_changes;
END
$$;

-- The API representation of an event (GET /changes, the stream, webhooks), and the view
-- psql users read the log through.
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

CREATE OR REPLACE FUNCTION product_change_json(seq bigint, e product_change_events) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT row_to_json(ROW(
        seq::text,
        e.type,
        e.product ->> 'sku',
        e.product,
        e.changed,
        (SELECT movement_json(m) FROM stock_movements m WHERE m.id = e.movement_id),
        to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::product_change_api)
$$;

-- Up to max_rows events with seq > after, in seq order: GET /changes, the streams and the
-- webhooks read this, psql users too (SELECT event FROM product_changes_page(42, 100)). A
-- page costs its own rows, wherever it starts: the batches are found by last_seq, the events
-- of each by (stmt, k).
CREATE OR REPLACE FUNCTION product_changes_page(after bigint, max_rows integer)
    RETURNS TABLE (seq bigint, type text, at timestamptz, event json)
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT b.last_seq - b.events + e.k, e.type, e.at,
           product_change_json(b.last_seq - b.events + e.k, e)
    FROM (SELECT x.last_seq, x.stmt, x.events FROM product_change_batches x
          WHERE x.last_seq > after ORDER BY x.last_seq LIMIT max_rows) b
    CROSS JOIN LATERAL (SELECT x.* FROM product_change_events x
                        WHERE x.stmt = b.stmt AND x.k > after - (b.last_seq - b.events)
                        ORDER BY x.k LIMIT max_rows) e
    ORDER BY b.last_seq, e.k
    LIMIT max_rows
$$;

CREATE OR REPLACE VIEW product_changes AS
SELECT b.last_seq - b.events + e.k AS seq, e.type, e.product ->> 'sku' AS sku, e.product,
       e.changed,
       (SELECT movement_json(m) FROM stock_movements m WHERE m.id = e.movement_id) AS movement,
       e.at, e.product_id, e.movement_id
FROM product_change_batches b JOIN product_change_events e ON e.stmt = b.stmt;

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

-- The triggers: SECURITY DEFINER, as they write the log the service may only read (the fixed
-- search_path keeps a caller's own objects out of them). Two ways, by the transaction's
-- setting inventory.change_log:
--   unset (the default), row by row: an AFTER ... FOR EACH ROW trigger inserts each row's
--     event, each its own statement number. The cheapest for the one-row statements of the
--     API: no transition table is read, no join planned.
--   'bulk' (SET LOCAL inventory.change_log = bulk; the import sets it), set-wise: the row
--     triggers stay quiet and statement-level triggers write all of a statement's events in
--     one INSERT ... SELECT from its transition tables: a million-row import is one
--     statement, not a million calls.
--
-- plan_cache_mode = force_generic_plan: PL/pgSQL plans a query with parameters anew on every
-- call for as long as the planner thinks the generic plan the costlier; the generic plans here
-- are as good. The set-wise SQL is written so that every plan PL/pgSQL may keep is linear
-- whatever the number of rows (the plan made for a session's first, one-row statement also
-- runs its million-row one): old and new rows meet in a FULL JOIN (hash or merge, never a
-- nested loop over two tuplestores), tables are read through joins that hash or index probes.
--
-- Stock movements are not logged here: the ledger's trigger (stock_movements_apply, below)
-- writes one event per movement, with the movement and the product as the statement left it,
-- and the totals it keeps on products change in a statement of that trigger. So these
-- triggers look only at statements run by clients (pg_trigger_depth() = 0): a product's
-- fields, its creation and its deletion.
CREATE OR REPLACE FUNCTION product_changes_log_created() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    VALUES (nextval('product_change_statements'), 1, 'product.created', NEW.id,
            product_json(NEW), '{}');
    RETURN NULL;
END
$$;

-- An update that changes no field (possible within one transaction, where updated_at stays)
-- logs nothing.
CREATE OR REPLACE FUNCTION product_changes_log_updated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
DECLARE
    changed text[] := product_changed_fields(OLD, NEW);
BEGIN
    IF cardinality(changed) = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    VALUES (nextval('product_change_statements'), 1, 'product.updated', NEW.id,
            product_json(NEW), changed);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION product_changes_log_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    VALUES (nextval('product_change_statements'), 1, 'product.deleted', OLD.id,
            product_json(OLD), '{}');
    RETURN NULL;
END
$$;

-- Set-wise (inventory.change_log = 'bulk'): one statement number for the statement's events.
CREATE OR REPLACE FUNCTION product_changes_log_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    SELECT (SELECT nextval('product_change_statements')), row_number() OVER (),
           'product.created', n.id, product_json(n), '{}'
    FROM new_rows n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION product_changes_log_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    SELECT (SELECT nextval('product_change_statements')), row_number() OVER (),
           'product.updated', d.id, d.product, d.changed
    -- OFFSET 0: each expression once per row, not once more in the WHERE.
    FROM (SELECT n.id, product_json(n) AS product, product_changed_fields(o, n) AS changed
          FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
          OFFSET 0) d
    WHERE cardinality(d.changed) > 0;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION product_changes_log_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    INSERT INTO product_change_events (stmt, k, type, product_id, product, changed)
    SELECT (SELECT nextval('product_change_statements')), row_number() OVER (),
           'product.deleted', o.id, product_json(o), '{}'
    FROM old_rows o;
    RETURN NULL;
END
$$;

-- The releases before locations matched a product's row change with the movement of the
-- same statement; the ledger's trigger now writes movement events itself.
DROP TRIGGER IF EXISTS product_changes_movements_begin ON stock_movements;
DROP TRIGGER IF EXISTS product_changes_log_movement ON stock_movements;
DROP FUNCTION IF EXISTS product_changes_movements_begin(), product_changes_log_movement();

CREATE OR REPLACE TRIGGER product_changes_log_created
    AFTER INSERT ON products FOR EACH ROW
    WHEN (current_setting('inventory.change_log', true) IS DISTINCT FROM 'bulk'
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_created();
CREATE OR REPLACE TRIGGER product_changes_log_updated
    AFTER UPDATE ON products FOR EACH ROW
    WHEN (current_setting('inventory.change_log', true) IS DISTINCT FROM 'bulk'
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_updated();
CREATE OR REPLACE TRIGGER product_changes_log_deleted
    AFTER DELETE ON products FOR EACH ROW
    WHEN (current_setting('inventory.change_log', true) IS DISTINCT FROM 'bulk'
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_deleted();
CREATE OR REPLACE TRIGGER product_changes_log_insert
    AFTER INSERT ON products REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (current_setting('inventory.change_log', true) = 'bulk' AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_insert();
CREATE OR REPLACE TRIGGER product_changes_log_update
    AFTER UPDATE ON products REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('inventory.change_log', true) = 'bulk' AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_update();
CREATE OR REPLACE TRIGGER product_changes_log_delete
    AFTER DELETE ON products REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    WHEN (current_setting('inventory.change_log', true) = 'bulk' AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION product_changes_log_delete();

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

-- The sequencer: numbers the committed statements it has not numbered yet (at most max_rows
-- of them, and every hole that has since committed), in statement order, and NOTIFYs
-- product_changes with the last seq given. One runs at a time (a transaction-scoped advisory
-- lock); returns how many events it numbered, or NULL when another sequencer held the lock
-- (with wait, it queues for the lock instead). Each call is its own transaction: call it in
-- autocommit, again while it numbers something.
--
-- Committed statements are found above `high` through product_change_events_statement_idx,
-- one entry per statement; numbers below `high` that were not visible then (holes: a
-- transaction still in flight) are looked up one by one. So a run costs what is new plus a
-- probe per transaction in flight, however many rows an open transaction has written and
-- however long it stays open. A hole is dropped once it cannot commit any more: every
-- transaction that could have taken its number (xid below holes_until) has ended.
CREATE OR REPLACE FUNCTION product_changes_sequence(
    max_rows integer DEFAULT 10000, wait boolean DEFAULT false
) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    lock_key CONSTANT integer := 'product_change_batches'::regclass::oid::integer;
    state product_changes_sequencer;
    seen bigint[];
    until bigint;
    horizon bigint;
    reappeared bigint[];
    top bigint;
    last bigint;
    how_many bigint;
    holes bigint[];
    holes_until bigint[];
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock(lock_key, 1);
    ELSIF NOT pg_try_advisory_xact_lock(lock_key, 1) THEN
        RETURN NULL;
    END IF;
    -- Each statement below sees everything committed before it began (the lock came first).
    SELECT * INTO state FROM product_changes_sequencer;
    IF NOT FOUND THEN
        state := ROW(true, 0, '{}', '{}')::product_changes_sequencer;
    END IF;
    seen := ARRAY(SELECT e.stmt FROM product_change_events e
                  WHERE e.k = 1 AND e.stmt > state.high ORDER BY e.stmt LIMIT max_rows);
    IF cardinality(seen) = 0 AND cardinality(state.holes) = 0 THEN
        RETURN 0;  -- the common look at an idle log: as cheap as it can be
    END IF;
    IF seen[cardinality(seen)] - state.high > cardinality(seen) THEN
        -- There are holes: whoever took one had its xid before this one is taken (xids are
        -- handed out in order, and a statement takes its number after its first write). Not
        -- a snapshot's xmax: that follows the last xid to complete, not the last handed out.
        until := pg_current_xact_id()::text::bigint;
    END IF;
    -- Taken before the holes are looked at: a hole whose transactions had all ended by now
    -- and that the look below does not find never will be there.
    horizon := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    reappeared := ARRAY(SELECT h FROM unnest(state.holes) h
                   WHERE EXISTS (SELECT FROM product_change_events e WHERE e.stmt = h AND e.k = 1)
                   ORDER BY h);
    top := product_changes_last_seq();
    -- Holes first: they are all below high, and seen is all above it.
    WITH added AS (
        INSERT INTO product_change_batches (last_seq, stmt, events, at)
        SELECT top + sum(s.events) OVER (ORDER BY s.ord), s.stmt, s.events, s.at
        FROM (SELECT u.stmt, u.ord,
                     (SELECT e.k FROM product_change_events e WHERE e.stmt = u.stmt
                      ORDER BY e.k DESC LIMIT 1) AS events,
                     (SELECT e.at FROM product_change_events e WHERE e.stmt = u.stmt AND e.k = 1)
                         AS at
              FROM unnest(reappeared || seen) WITH ORDINALITY u(stmt, ord)) s
        RETURNING last_seq, events
    )
    SELECT max(a.last_seq), coalesce(sum(a.events), 0) INTO last, how_many FROM added a;
    -- The holes still to look at: the old ones not found and not known dead, and the numbers
    -- between those seen now.
    SELECT coalesce(array_agg(h ORDER BY h), '{}'), coalesce(array_agg(u ORDER BY h), '{}')
    INTO holes, holes_until
    FROM (SELECT t.h, t.u FROM unnest(state.holes, state.holes_until) t(h, u)
          WHERE t.h <> ALL (reappeared) AND t.u > horizon
          UNION ALL
          SELECT g, until
          FROM (SELECT s, lag(s, 1, state.high) OVER (ORDER BY s) AS prev FROM unnest(seen) s) x
          CROSS JOIN LATERAL generate_series(x.prev + 1, x.s - 1) g) kept;
    IF how_many > 0 OR holes IS DISTINCT FROM state.holes THEN
        INSERT INTO product_changes_sequencer AS q (high, holes, holes_until)
        VALUES (coalesce(seen[cardinality(seen)], state.high), holes, holes_until)
        ON CONFLICT (one) DO UPDATE
        SET high = excluded.high, holes = excluded.holes, holes_until = excluded.holes_until;
    END IF;
    IF how_many > 0 THEN
        PERFORM pg_notify('product_changes', last::text);
    END IF;
    RETURN how_many;
END
$$;

-- The sequencer role's holder calls this and stays in it: it numbers what is committed,
-- looking every poll_seconds from inside the server (at once again while a look finds a full
-- batch), for wait_seconds; returns (numbered) how many events it numbered meanwhile, or
-- NULL as soon as another sequencer holds the lock. Each look NOTIFYs what it numbered as it
-- commits, so nobody waits for the call to end. A look at an idle log is an index probe in
-- the server, not a round trip that wakes the service (each such wake-up costs the process
-- far more); under load, numbering waits a poll between looks, so it comes in batches, not
-- a transaction (and a NOTIFY) per commit of the writers. A procedure, each look its own
-- transaction (COMMIT): nothing is held between looks, no snapshot holds back vacuum. Not
-- SECURITY DEFINER and no SET clause (either forbids COMMIT), so only qualified names; call
-- it in autocommit, past statement_timeout.
CREATE OR REPLACE PROCEDURE product_changes_await(
    poll_seconds double precision, wait_seconds double precision, max_rows integer,
    INOUT numbered bigint DEFAULT NULL
)
    LANGUAGE plpgsql AS
$$
DECLARE
    deadline timestamptz :=
        pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => wait_seconds);
    got bigint;
BEGIN
    numbered := 0;
    LOOP
        got := public.product_changes_sequence(max_rows);
        COMMIT;
        IF got IS NULL THEN
            numbered := NULL;
            RETURN;
        END IF;
        numbered := numbered + got;
        EXIT WHEN pg_catalog.clock_timestamp() >= deadline;
        IF got < max_rows THEN
            PERFORM pg_catalog.pg_sleep(poll_seconds);
        END IF;
    END LOOP;
END
$$;

-- The service's sequencer role: one process at a time calls product_changes_sequence() on a
-- schedule; the others wait in here (a session lock, each on a connection of its own) and
-- the first in line takes over the moment the holder's session ends.
CREATE OR REPLACE FUNCTION product_changes_sequencer_role() RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS
$$
    SELECT pg_advisory_lock('product_change_batches'::regclass::oid::integer, 3)
$$;

-- Retention: removes the oldest events, in seq order and at most max_rows of them, while
-- they are older than retention_days (counted from the change) and no webhook still has to
-- retry them (a retry is given up within 24 h of its event), with the logged delivery
-- attempts of the removed events. The owner's floor (product_changes_purged.retention_days)
-- wins over a smaller retention_days: no caller can shorten the trail. Records the last
-- removed seq in product_changes_purged (GET /changes answers 410 for a cursor before it).
-- One runs at a time (advisory lock); returns the number of events removed, NULL when
-- another purge held the lock.
CREATE OR REPLACE FUNCTION product_changes_purge(
    retention_days integer, max_rows integer DEFAULT 10000
) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    mark product_changes_purged;
    cutoff timestamptz;
    kept_for_retry bigint;
    b product_change_batches;
    first bigint;
    upto bigint;
    done bigint;
    n bigint;
    removed bigint := 0;
BEGIN
    IF retention_days IS NULL OR retention_days < 1 THEN
        RAISE EXCEPTION 'retention_days must be at least 1, not %', retention_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock('product_change_batches'::regclass::oid::integer, 2) THEN
        RETURN NULL;
    END IF;
    -- The mark's row, should anyone have deleted it (its floor is then the default's).
    INSERT INTO product_changes_purged DEFAULT VALUES ON CONFLICT DO NOTHING;
    SELECT * INTO mark FROM product_changes_purged FOR UPDATE;
    cutoff := now() - make_interval(days => greatest(retention_days, mark.retention_days));
    kept_for_retry := (SELECT min(r.seq) FROM webhook_retries r);
    done := mark.through;
    WHILE removed < max_rows LOOP
        SELECT * INTO b FROM product_change_batches x WHERE x.last_seq > done
        ORDER BY x.last_seq LIMIT 1;
        EXIT WHEN NOT FOUND OR b.at >= cutoff;
        first := b.last_seq - b.events + 1;
        upto := least(b.last_seq, done + max_rows - removed,
                      coalesce(kept_for_retry - 1, b.last_seq));
        EXIT WHEN upto <= done;
        DELETE FROM product_change_events e
        WHERE e.stmt = b.stmt AND e.k > done - first + 1 AND e.k <= upto - first + 1;
        GET DIAGNOSTICS n = ROW_COUNT;
        removed := removed + n;
        IF upto = b.last_seq THEN
            DELETE FROM product_change_batches x WHERE x.last_seq = b.last_seq;
        END IF;
        DELETE FROM webhook_attempts a WHERE a.seq > done AND a.seq <= upto;
        done := upto;
    END LOOP;
    IF done > mark.through THEN
        UPDATE product_changes_purged SET through = done;
    END IF;
    RETURN removed;
END
$$;

-- Webhooks: at most 100 subscriptions. Each is served on its own, with up to
-- INVENTORY_WEBHOOK_PER_RECEIVER attempts in flight, so that no receiver waits for another;
-- the bound keeps that within what one process can hold open at once.
CREATE OR REPLACE FUNCTION webhooks_limit() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    -- Serialised, so that two subscriptions made at once cannot both be the hundredth.
    LOCK TABLE webhooks IN SHARE ROW EXCLUSIVE MODE;
    IF (SELECT count(*) FROM webhooks) >= 100 THEN
        RAISE EXCEPTION 'at most 100 webhooks'
            USING ERRCODE = 'check_violation', TABLE = 'webhooks', CONSTRAINT = 'webhooks_limit';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER webhooks_limit
    BEFORE INSERT ON webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks_limit();

-- A subscription created with an Idempotency-Key left its 201 in idempotency_keys for 24 h,
-- signing secret included, to be replayed. The replay goes with the subscription, whoever
-- deletes it (the API or psql), so the secret outlives it nowhere.
CREATE OR REPLACE FUNCTION webhooks_forget_replays() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM idempotency_keys k
    USING deleted d
    WHERE (k.scope = 'POST /webhooks' OR k.scope LIKE 'POST /webhooks %')
      AND k.status = 201
      AND convert_from(k.body, 'UTF8')::jsonb ->> 'id' = d.id::text;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER webhooks_forget_replays
    AFTER DELETE ON webhooks REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks_forget_replays();

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

-- The delivery protocol, shared by every process on every host. A process leases a
-- subscription that has work, serves it (webhook_work, then webhook_record, batch after
-- batch, each renewing the lease) and hands it back when it has nothing more to do. The
-- lease must outlast a batch: a process that dies leaves the subscription to another one
-- when its lease runs out, which repeats the unrecorded attempts (at least once).
--
-- Lease: up to max_webhooks subscriptions with work (an event after their cursor, or a retry
-- due) that no process holds, the least recently served first, for lease_seconds. Ones
-- another process is leasing at the same moment are skipped, never waited for.
CREATE OR REPLACE FUNCTION webhook_lease(max_webhooks integer, lease_seconds double precision)
    RETURNS TABLE (id bigint, token uuid, url text, secret text, events text[])
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
    WITH free AS (
        SELECT w.id
        FROM webhooks w
        WHERE (w.lease_until IS NULL OR w.lease_until < now())
          AND (w.after < product_changes_last_seq()
               OR EXISTS (SELECT FROM webhook_retries r
                          WHERE r.webhook_id = w.id AND r.next_attempt_at <= now()))
        ORDER BY w.served_at NULLS FIRST, w.id
        LIMIT max_webhooks
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE webhooks w
    SET lease_token = gen_random_uuid(),
        lease_until = now() + make_interval(secs => lease_seconds),
        served_at = now()
    FROM free
    WHERE w.id = free.id
    RETURNING w.id, w.lease_token, w.url, w.secret, w.events
$$;

-- Work for a leased subscription: its due retries (oldest due first, at most max_attempts),
-- then the next of the (at most max_scan) events after its cursor, fresh, as many as the
-- attempts left allow. event is the JSON to send, NULL for an event of a type the
-- subscription does not take (only its cursor moves past it); give_up_at is the event's
-- time plus give_up_after. No rows when the lease is not the caller's.
CREATE OR REPLACE FUNCTION webhook_work(
    webhook_id bigint, token uuid, max_attempts integer, max_scan integer,
    give_up_after interval
) RETURNS TABLE (seq bigint, attempt integer, event text, give_up_at timestamptz,
                 fresh boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS
$$
    WITH w AS (
        SELECT x.after, x.events FROM webhooks x
        WHERE x.id = webhook_work.webhook_id AND x.lease_token = webhook_work.token
    ), due AS (
        SELECT r.seq, r.attempts + 1 AS attempt, r.give_up_at
        FROM webhook_retries r
        WHERE r.webhook_id = webhook_work.webhook_id AND r.next_attempt_at <= now()
          AND EXISTS (SELECT FROM w)
        ORDER BY r.next_attempt_at
        LIMIT max_attempts
    ), scanned AS (
        SELECT p.seq, p.at,
               CASE WHEN p.type = ANY (w.events) OR '*' = ANY (w.events) THEN p.event::text END
                   AS event
        FROM w CROSS JOIN LATERAL product_changes_page(w.after, max_scan) p
    ), counted AS (
        SELECT s.*, count(s.event) OVER (ORDER BY s.seq) AS matches FROM scanned s
    )
    SELECT d.seq, d.attempt, (SELECT p.event::text FROM product_changes_page(d.seq - 1, 1) p),
           d.give_up_at, false
    FROM due d
    UNION ALL
    SELECT c.seq, 1, c.event, c.at + give_up_after, true
    FROM counted c
    WHERE c.matches <= max_attempts - (SELECT count(*) FROM due)
$$;

-- Record one batch of a leased subscription, in one transaction: its attempts are logged; a
-- 2xx delivers; otherwise the next attempt comes retry_seconds * 2^(attempt - 1) later, but
-- never after give_up_at, and an attempt that fails at or after give_up_at gives up
-- (failed). The cursor moves to `scanned` and the lease is renewed for lease_seconds.
-- Returns the outcomes in the order given; NULL, recording nothing, when the lease is no
-- longer the caller's (it ran out and another process took the subscription, or the
-- subscription was deleted).
CREATE OR REPLACE FUNCTION webhook_record(
    webhook_id bigint, token uuid, scanned bigint, lease_seconds double precision,
    retry_seconds double precision, seqs bigint[], attempts integer[], status_codes integer[],
    errors text[], durations integer[], give_up_ats timestamptz[]
) RETURNS text[]
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    outcomes text[];
BEGIN
    UPDATE webhooks w
    SET after = greatest(w.after, scanned),
        lease_until = now() + make_interval(secs => lease_seconds)
    WHERE w.id = webhook_record.webhook_id AND w.lease_token = webhook_record.token;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    WITH r AS MATERIALIZED (
        SELECT t.n, t.seq, t.attempt, t.status_code, left(t.error, 1000) AS error,
               greatest(t.duration_ms, 0) AS duration_ms, t.give_up_at,
               CASE WHEN t.status_code BETWEEN 200 AND 299 THEN 'delivered'
                    WHEN now() >= t.give_up_at THEN 'failed'
                    ELSE 'retry' END AS outcome
        FROM unnest(seqs, attempts, status_codes, errors, durations, give_up_ats)
             WITH ORDINALITY AS t(seq, attempt, status_code, error, duration_ms, give_up_at, n)
    ), logged AS (
        INSERT INTO webhook_attempts (webhook_id, seq, attempt, outcome, status_code, error,
                                      duration_ms)
        SELECT webhook_record.webhook_id, r.seq, r.attempt, r.outcome, r.status_code, r.error,
               r.duration_ms
        FROM r
        -- The same attempt again (a lease that ran out mid-batch): logged once.
        ON CONFLICT DO NOTHING
    ), settled AS (
        DELETE FROM webhook_retries x USING r
        WHERE x.webhook_id = webhook_record.webhook_id AND x.seq = r.seq
          AND r.outcome <> 'retry'
    ), scheduled AS (
        INSERT INTO webhook_retries AS x (webhook_id, seq, attempts, next_attempt_at,
                                          give_up_at)
        SELECT webhook_record.webhook_id, r.seq, r.attempt,
               least(now() + make_interval(secs => retry_seconds * 2 ^ least(r.attempt - 1, 30)),
                     r.give_up_at),
               r.give_up_at
        FROM r
        WHERE r.outcome = 'retry'
        ON CONFLICT ON CONSTRAINT webhook_retries_pkey DO UPDATE
        SET attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at
    )
    SELECT coalesce(array_agg(r.outcome ORDER BY r.n), '{}') INTO outcomes FROM r;
    RETURN outcomes;
END
$$;

-- Hand a leased subscription back (nothing more to do, or the process is stopping).
CREATE OR REPLACE FUNCTION webhook_release(webhook_id bigint, token uuid) RETURNS void
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
    UPDATE webhooks w SET lease_token = NULL, lease_until = NULL
    WHERE w.id = webhook_release.webhook_id AND w.lease_token = webhook_release.token
$$;

-- When to look for delivery work again without being told: the next retry due, or the end
-- of a lease (its process may have died); NULL when nothing waits.
CREATE OR REPLACE FUNCTION webhook_next_due() RETURNS timestamptz
    LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS
$$
    SELECT least((SELECT min(r.next_attempt_at) FROM webhook_retries r),
                 (SELECT min(w.lease_until) FROM webhooks w))
$$;

-- How long the oldest event some subscription has yet to get has waited (0: none waits).
CREATE OR REPLACE FUNCTION webhook_backlog_seconds() RETURNS double precision
    LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS
$$
    SELECT coalesce(extract(epoch FROM now() - least(
        (SELECT min(b.at) FROM webhooks w
         CROSS JOIN LATERAL (SELECT x.at FROM product_change_batches x
                             WHERE x.last_seq > w.after ORDER BY x.last_seq LIMIT 1) b),
        (SELECT min(b.at) FROM webhook_retries r
         CROSS JOIN LATERAL (SELECT x.at FROM product_change_batches x
                             WHERE x.last_seq >= r.seq ORDER BY x.last_seq LIMIT 1) b)
    ))::double precision, 0)
$$;

COMMENT ON SEQUENCE product_change_statements IS
    'Statement numbers of the change log, taken when a statement writes its first event.';
COMMENT ON TABLE product_change_events IS
    'The change log''s events, written by triggers in the changing transaction, never updated: '
    'one per changed product or stock movement. Read them with seq through product_changes.';
COMMENT ON COLUMN product_change_events.stmt IS 'The writing statement''s number.';
COMMENT ON COLUMN product_change_events.k IS 'The event''s place in its statement, from 1.';
COMMENT ON COLUMN product_change_events.type IS 'product.created, product.updated or product.deleted.';
COMMENT ON COLUMN product_change_events.product_id IS 'The product (it may since have been deleted).';
COMMENT ON COLUMN product_change_events.product IS
    'product_json of the product after the change; for a delete, its last state.';
COMMENT ON COLUMN product_change_events.changed IS
    'Fields of product_json whose value changed; empty for created and deleted, and for a '
    'movement its statement wrote without changing the product.';
COMMENT ON COLUMN product_change_events.movement_id IS
    'The stock movement the change was (stock_movements.id), if any.';
COMMENT ON COLUMN product_change_events.at IS 'When the change was made (its transaction''s time, like updated_at).';
COMMENT ON CONSTRAINT product_change_events_pkey ON product_change_events IS
    'One event per place in a statement; the readers'' and retention''s path to a statement''s events.';
COMMENT ON INDEX product_change_events_pkey IS
    'The events of a statement in order (GET /changes pages, retention).';
COMMENT ON CONSTRAINT product_change_events_type_check ON product_change_events IS
    'Only the three event types of the API.';
COMMENT ON INDEX product_change_events_statement_idx IS
    'One entry per statement: the sequencer''s look for committed statements costs one entry '
    'per statement, never one per row of a transaction still in flight.';
COMMENT ON TABLE product_change_batches IS
    'Numbered statements: the events of stmt are seq last_seq - events + 1 .. last_seq. '
    'Written by product_changes_sequence() once the statement has committed.';
COMMENT ON COLUMN product_change_batches.last_seq IS 'The seq of the statement''s last event.';
COMMENT ON COLUMN product_change_batches.stmt IS 'The statement (product_change_events.stmt).';
COMMENT ON COLUMN product_change_batches.events IS 'How many events the statement wrote.';
COMMENT ON COLUMN product_change_batches.at IS 'When the statement''s changes were made; retention counts from here.';
COMMENT ON CONSTRAINT product_change_batches_pkey ON product_change_batches IS
    'seq ranges never overlap; readers find the batch of a cursor by it.';
COMMENT ON INDEX product_change_batches_pkey IS
    'Batches in seq order: pages, retention, the newest seq.';
COMMENT ON CONSTRAINT product_change_batches_stmt_key ON product_change_batches IS
    'A statement is numbered once.';
COMMENT ON INDEX product_change_batches_stmt_key IS 'A statement is numbered once.';
COMMENT ON CONSTRAINT product_change_batches_events_check ON product_change_batches IS
    'A numbered statement wrote at least one event.';
COMMENT ON TABLE product_changes_sequencer IS
    'Where product_changes_sequence() stands: statement numbers up to high were looked at; '
    'holes were not visible then and are looked at again until they commit or cannot.';
COMMENT ON COLUMN product_changes_sequencer.high IS 'Every statement number up to this has been looked at.';
COMMENT ON COLUMN product_changes_sequencer.holes IS 'Numbers up to high not yet seen committed.';
COMMENT ON COLUMN product_changes_sequencer.holes_until IS
    'Per hole: every transaction that could have taken it has an xid (xid8) below this.';
COMMENT ON CONSTRAINT product_changes_sequencer_pkey ON product_changes_sequencer IS 'One row.';
COMMENT ON INDEX product_changes_sequencer_pkey IS 'One row.';
COMMENT ON CONSTRAINT product_changes_sequencer_one_check ON product_changes_sequencer IS 'One row.';
COMMENT ON CONSTRAINT product_changes_sequencer_holes_check ON product_changes_sequencer IS
    'A horizon for every hole.';
COMMENT ON TABLE product_changes_purged IS
    'Retention''s mark: every event with seq <= through has been removed, every later one is kept.';
COMMENT ON COLUMN product_changes_purged.through IS 'The last seq removed (0: none).';
COMMENT ON COLUMN product_changes_purged.retention_days IS
    'The floor of retention, set by the owner: events are kept at least this many days, '
    'whatever a caller of product_changes_purge() asks.';
COMMENT ON CONSTRAINT product_changes_purged_pkey ON product_changes_purged IS 'One row.';
COMMENT ON INDEX product_changes_purged_pkey IS 'One row.';
COMMENT ON CONSTRAINT product_changes_purged_one_check ON product_changes_purged IS 'One row.';
COMMENT ON CONSTRAINT product_changes_purged_retention_days_check ON product_changes_purged IS
    'Retention is at least a day.';
COMMENT ON VIEW product_changes IS
    'The change log with its seq, for psql: every numbered event. For a page after a cursor, '
    'product_changes_page(after, n) reads only that page.';
COMMENT ON TYPE product_change_api IS 'The fields of an event as the API returns them.';
COMMENT ON FUNCTION product_change_json(bigint, product_change_events) IS
    'The API representation of an event of GET /changes, given its seq.';
COMMENT ON FUNCTION product_changes_page(bigint, integer) IS
    'Up to max_rows events with seq > after, in seq order, as the API shows them.';
COMMENT ON FUNCTION product_changes_last_seq() IS 'The newest seq given (0 before the first).';
COMMENT ON FUNCTION product_changes_sequence(integer, boolean) IS
    'Numbers committed statements (one caller at a time); returns how many events, NULL if another runs.';
COMMENT ON FUNCTION product_changes_purge(integer, integer) IS
    'Removes one batch of events older than the retention (never less than the owner''s floor); '
    'returns how many, NULL if another runs.';
COMMENT ON PROCEDURE product_changes_await(double precision, double precision, integer, bigint) IS
    'Numbers committed statements as they come for wait_seconds, looking every poll_seconds.';
COMMENT ON FUNCTION product_changes_sequencer_role() IS
    'Waits for, then holds for the session, the role of the process that runs the sequencer.';
COMMENT ON TABLE webhooks IS 'Webhook subscriptions (POST /webhooks), each with its cursor and lease.';
COMMENT ON COLUMN webhooks.secret IS 'whsec_ + base64 signing key; the API shows it only when created.';
COMMENT ON COLUMN webhooks.events IS 'Event types delivered, or {*} for all.';
COMMENT ON COLUMN webhooks.after IS
    'Every event with seq <= after has had its first attempt or was given up.';
COMMENT ON COLUMN webhooks.lease_token IS 'The process serving the subscription now (webhook_lease).';
COMMENT ON COLUMN webhooks.lease_until IS 'Until when that process holds it.';
COMMENT ON COLUMN webhooks.served_at IS 'When a process last took it up: the least recently served goes first.';
COMMENT ON CONSTRAINT webhooks_pkey ON webhooks IS 'The subscription''s id (GET /webhooks/{id}).';
COMMENT ON INDEX webhooks_pkey IS 'The subscription''s id (GET /webhooks/{id}).';
COMMENT ON CONSTRAINT webhooks_url_check ON webhooks IS 'An http or https URL with a host, at most 2000 characters.';
COMMENT ON CONSTRAINT webhooks_events_check ON webhooks IS '1 to 4 known event types, or *.';
COMMENT ON CONSTRAINT webhooks_description_check ON webhooks IS 'At most 500 characters.';
COMMENT ON CONSTRAINT webhooks_secret_check ON webhooks IS 'A Standard Webhooks secret: whsec_ and base64.';
COMMENT ON TABLE webhook_retries IS
    'Deliveries that failed and are tried again, until 24 h after their event.';
COMMENT ON COLUMN webhook_retries.attempts IS 'Attempts made so far.';
COMMENT ON COLUMN webhook_retries.next_attempt_at IS 'When the next attempt falls due.';
COMMENT ON COLUMN webhook_retries.give_up_at IS 'The event''s time + 24 h: a failure from then on gives up.';
COMMENT ON CONSTRAINT webhook_retries_pkey ON webhook_retries IS 'One retry per (subscription, event).';
COMMENT ON INDEX webhook_retries_pkey IS 'One retry per (subscription, event).';
COMMENT ON CONSTRAINT webhook_retries_webhook_id_fkey ON webhook_retries IS
    'Deleting a subscription drops its retries.';
COMMENT ON CONSTRAINT webhook_retries_attempts_check ON webhook_retries IS 'Never negative.';
COMMENT ON INDEX webhook_retries_webhook_id_next_attempt_at_idx IS
    'A subscription''s due retries, oldest due first (webhook_work, webhook_lease).';
COMMENT ON INDEX webhook_retries_next_attempt_at_idx IS
    'When the next retry of any subscription falls due (webhook_next_due).';
COMMENT ON INDEX webhook_retries_seq_idx IS 'The oldest event still to retry: where retention stops.';
COMMENT ON TABLE webhook_attempts IS 'Every delivery attempt and its outcome (GET /webhooks/{id}/deliveries).';
COMMENT ON CONSTRAINT webhook_attempts_pkey ON webhook_attempts IS 'Attempt ids: the deliveries log''s keyset.';
COMMENT ON INDEX webhook_attempts_pkey IS 'Attempt ids: the deliveries log''s keyset.';
COMMENT ON CONSTRAINT webhook_attempts_webhook_id_fkey ON webhook_attempts IS
    'Deleting a subscription drops its log.';
COMMENT ON CONSTRAINT webhook_attempts_attempt_check ON webhook_attempts IS 'Attempts count from 1.';
COMMENT ON CONSTRAINT webhook_attempts_outcome_check ON webhook_attempts IS 'delivered, retry or failed.';
COMMENT ON CONSTRAINT webhook_attempts_status_code_check ON webhook_attempts IS 'An HTTP status code.';
COMMENT ON CONSTRAINT webhook_attempts_error_check ON webhook_attempts IS 'At most 1000 characters.';
COMMENT ON CONSTRAINT webhook_attempts_duration_ms_check ON webhook_attempts IS 'Never negative.';
COMMENT ON CONSTRAINT webhook_attempts_seq_webhook_id_attempt_key ON webhook_attempts IS
    'An attempt is logged once; seq first, for retention''s removal of old attempts.';
COMMENT ON INDEX webhook_attempts_seq_webhook_id_attempt_key IS
    'An attempt is logged once; seq first, for retention''s removal of old attempts.';
COMMENT ON INDEX webhook_attempts_webhook_id_id_idx IS
    'A subscription''s log, newest first; also serves the cascade from webhooks.';
COMMENT ON FUNCTION webhooks_limit() IS 'Refuses a 101st webhook subscription.';
COMMENT ON FUNCTION webhooks_forget_replays() IS
    'Deletes the stored Idempotency-Key replays (with their secrets) of deleted subscriptions.';
COMMENT ON TYPE webhook_api IS 'The fields of a webhook as the API returns them (no secret).';
COMMENT ON FUNCTION webhook_json(webhooks) IS 'The API representation of a webhook, without its secret.';
COMMENT ON TYPE webhook_attempt_api IS 'The fields of a delivery attempt as the API returns them.';
COMMENT ON FUNCTION webhook_attempt_json(webhook_attempts) IS
    'The API representation of a delivery attempt (GET /webhooks/{id}/deliveries).';
COMMENT ON FUNCTION webhook_lease(integer, double precision) IS
    'Leases subscriptions with delivery work to the calling process (SKIP LOCKED).';
COMMENT ON FUNCTION webhook_work(bigint, uuid, integer, integer, interval) IS
    'A leased subscription''s due retries and next events.';
COMMENT ON FUNCTION
    webhook_record(bigint, uuid, bigint, double precision, double precision, bigint[],
                   integer[], integer[], text[], integer[], timestamptz[]) IS
    'Logs a batch of attempts: delivers, schedules retries or gives up; moves the cursor.';
COMMENT ON FUNCTION webhook_release(bigint, uuid) IS 'Hands a leased subscription back.';
COMMENT ON FUNCTION webhook_next_due() IS 'When delivery work next falls due without a new event.';
COMMENT ON FUNCTION webhook_backlog_seconds() IS
    'Age of the oldest event a subscription has yet to get (0 when none waits).';

-- The service reads the log and never writes it: the triggers and the two functions do.
GRANT SELECT ON product_change_events, product_change_batches, product_changes_purged,
    product_changes TO inventory_rw;
GRANT USAGE ON TYPE product_change_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION product_change_json(bigint, product_change_events),
    product_changes_page(bigint, integer), product_changes_last_seq() TO inventory_rw;
REVOKE EXECUTE ON FUNCTION
    product_changes_sequence(integer, boolean),
    product_changes_purge(integer, integer),
    product_changes_sequencer_role(),
    product_changes_log_created(),
    product_changes_log_updated(),
    product_changes_log_deleted(),
    product_changes_log_insert(),
    product_changes_log_update(),
    product_changes_log_delete()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    product_changes_sequence(integer, boolean),
    product_changes_purge(integer, integer),
    product_changes_sequencer_role()
    TO inventory_rw;
REVOKE EXECUTE ON PROCEDURE
    product_changes_await(double precision, double precision, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE
    product_changes_await(double precision, double precision, integer, bigint) TO inventory_rw;
-- Releases before locations let everyone read where the movement ids stood; nothing needs it now.
REVOKE SELECT ON SEQUENCE stock_movements_id_seq FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON webhooks TO inventory_rw;
GRANT UPDATE (after, lease_token, lease_until, served_at) ON webhooks TO inventory_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_retries TO inventory_rw;
GRANT SELECT, INSERT ON webhook_attempts TO inventory_rw;
-- Analysts (inventory_reader) read the change log like the products, not the webhooks: their
-- secrets and where events go are the writers' business.
GRANT SELECT ON product_change_events, product_change_batches, product_changes_purged,
    product_changes TO inventory_reader;
GRANT USAGE ON TYPE product_change_api TO inventory_reader;
GRANT EXECUTE ON FUNCTION product_change_json(bigint, product_change_events),
    product_changes_page(bigint, integer), product_changes_last_seq() TO inventory_reader;
GRANT USAGE ON TYPE webhook_api, webhook_attempt_api TO inventory_rw;
GRANT EXECUTE ON FUNCTION webhook_json(webhooks), webhook_attempt_json(webhook_attempts)
    TO inventory_rw;
REVOKE EXECUTE ON FUNCTION
    webhook_lease(integer, double precision),
    webhook_work(bigint, uuid, integer, integer, interval),
    webhook_record(bigint, uuid, bigint, double precision, double precision, bigint[],
                   integer[], integer[], text[], integer[], timestamptz[]),
    webhook_release(bigint, uuid),
    webhook_next_due(),
    webhook_backlog_seconds()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    webhook_lease(integer, double precision),
    webhook_work(bigint, uuid, integer, integer, interval),
    webhook_record(bigint, uuid, bigint, double precision, double precision, bigint[],
                   integer[], integer[], text[], integer[], timestamptz[]),
    webhook_release(bigint, uuid),
    webhook_next_due(),
    webhook_backlog_seconds()
    TO inventory_rw;

-- ---------------------------------------------------------------------------------------
-- Imports
-- ---------------------------------------------------------------------------------------

-- Whether a line of an NDJSON import is JSON that jsonb takes. Only an import that failed
-- asks, line by line: a per-row exception block is slow, but it names every bad line.
CREATE OR REPLACE FUNCTION import_is_json(t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM t::jsonb;
    RETURN true;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    RETURN false;
END $$;
GRANT EXECUTE ON FUNCTION import_is_json(text) TO inventory_rw;
