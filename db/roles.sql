-- Roles of the Inventory API; idempotent. Roles are cluster-wide, the schema privilege is per
-- database: apply as a superuser into database inventory, before schema.sql. db/migrate.sh
-- applies both (only when they changed) and then sets the service role's password from
-- INVENTORY_APP_PASSWORD; by hand:
--   psql -v ON_ERROR_STOP=1 -d inventory -f db/roles.sql
--   psql -d inventory -c '\password inventory_app'

-- inventory_rw holds the table privileges (schema.sql grants them); nobody logs in as it.
-- inventory_app is the service's login and gets its rights only through inventory_rw.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'inventory_rw') THEN
        CREATE ROLE inventory_rw NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'inventory_app') THEN
        CREATE ROLE inventory_app LOGIN;
    END IF;
END
$$;

ALTER ROLE inventory_app WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE
    NOREPLICATION NOBYPASSRLS;

GRANT inventory_rw TO inventory_app;

-- No DDL for the service: nobody but the owner creates objects in schema public. This is
-- PostgreSQL 15's default; explicit so that an older cluster or a changed default holds too.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- No statement of the service runs unbounded: a runaway query (a missing index, a lock held
-- by a psql session) is cut off with SQLSTATE 57014, which the API answers 503 with
-- Retry-After. Set on the role, not per connection: it holds for every client logging in as
-- inventory_app, costs nothing per connection, and survives PgBouncer's transaction pooling
-- (which forbids the `options` startup parameter and leaks session SETs). A longer operation
-- (the bulk import's COPY) raises it for its own transaction with SET LOCAL.
ALTER ROLE inventory_app SET statement_timeout = '15s';

-- Nor does a transaction of the service stay open while nothing runs in it: the service
-- waits on its clients only inside a transaction it holds for them (an import's body
-- arriving between two statements), and a client can stall. Past a minute idle the
-- session ends (SQLSTATE 25P03, answered 503) and its locks and snapshot go with it. The
-- service itself never idles that long inside one: a body that stops for
-- INVENTORY_BODY_TIMEOUT_SECONDS (10) is cut off first.
ALTER ROLE inventory_app SET idle_in_transaction_session_timeout = '1min';
