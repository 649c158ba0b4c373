#!/usr/bin/env bash
# Applies db/roles.sql and schema.sql to one database, once per change of those files.
#
#   db/migrate.sh
#
# Connects with libpq's environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD) as a
# superuser. After a successful apply it records the sha256 of roles.sql + schema.sql in
# inventory_deploy.schema_applied; the next run with the same files applies nothing, so a
# restart never queues behind locks that schema.sql would take (CREATE OR REPLACE TRIGGER
# locks products). Concurrent runs on one database take turns (an advisory lock): the first
# applies, the others find the digest recorded and skip.
#
# Environment:
#   INVENTORY_APP_PASSWORD   the service role's password; set on every run (one ALTER ROLE,
#                            no table lock), so a changed password reaches the database even
#                            when the files did not change. Unset: the password is left alone.
#   INVENTORY_MIGRATE_FORCE  1: apply even when the digest is already recorded
#   PSQL                     the psql to use (default: psql on PATH)
#
# The files are found beside this script: roles.sql here, schema.sql one directory up (the
# repository's layout, and the layout docker-compose.yml mounts into the migrate service).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROLES_FILE=$HERE/roles.sql
SCHEMA_FILE=$(cd "$HERE/.." && pwd -P)/schema.sql
PSQL=${PSQL:-psql}

say() { printf 'migrate: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for f in "$ROLES_FILE" "$SCHEMA_FILE"; do
  [[ -r $f ]] || die "$f is missing"
  # The paths go into psql's \i as quoted arguments.
  [[ $f != *"'"* && $f != *\\* ]] || die "$f: a path with ' or \\ is not supported"
done

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -d' ' -f1
}
DIGEST=$(cat "$ROLES_FILE" "$SCHEMA_FILE" | sha256)
FORCE=false
[[ ${INVENTORY_MIGRATE_FORCE:-} == 1 ]] && FORCE=true

# The password travels hex-encoded inside the script on psql's stdin: never on a command line
# (visible to every local user in ps), and no quoting of arbitrary characters to get wrong.
APP_PASSWORD_HEX=
if [[ -n ${INVENTORY_APP_PASSWORD:-} ]]; then
  APP_PASSWORD_HEX=$(printf %s "$INVENTORY_APP_PASSWORD" | od -An -tx1 -v | tr -d ' \n')
fi

script() {
  cat <<SQL
\\set ON_ERROR_STOP 1
\\set QUIET 1
\\set digest '$DIGEST'
\\set force $FORCE
\\set app_password_hex '$APP_PASSWORD_HEX'
-- Re-applying idempotent SQL raises "already exists" notices; only warnings matter.
SET client_min_messages = warning;
-- ALTER ROLE ... PASSWORD below carries the password in clear: should it fail, the server
-- must not write the statement to its log.
SET log_min_error_statement = panic;
SET log_statement = none;
SELECT pg_advisory_lock(hashtext('inventory_deploy.schema_applied')) \\gset advisory_
-- Owned by the superuser, no grants: the service role cannot read or change it.
CREATE SCHEMA IF NOT EXISTS inventory_deploy;
CREATE TABLE IF NOT EXISTS inventory_deploy.schema_applied (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
SELECT coalesce(
           (SELECT sha256 = :'digest' FROM inventory_deploy.schema_applied
            ORDER BY id DESC LIMIT 1),
           false
       ) AND NOT :force AS up_to_date \\gset
\\if :up_to_date
SELECT to_char(max(applied_at), 'YYYY-MM-DD HH24:MI:SS TZ') AS since
    FROM inventory_deploy.schema_applied WHERE sha256 = :'digest' \\gset
\\warn 'migrate: roles.sql and schema.sql unchanged since' :since '(sha256' :digest'); nothing applied'
\\else
\\i '$ROLES_FILE'
\\i '$SCHEMA_FILE'
INSERT INTO inventory_deploy.schema_applied (sha256) VALUES (:'digest');
COMMENT ON TABLE inventory_deploy.schema_applied IS
    'One row per apply of db/roles.sql + schema.sql by db/migrate.sh: the sha256 of the two files.';
\\warn 'migrate: applied db/roles.sql and schema.sql (sha256' :digest')'
\\endif
SELECT :'app_password_hex' <> '' AS set_password \\gset
\\if :set_password
SELECT format('ALTER ROLE inventory_app PASSWORD %L',
              convert_from(decode(:'app_password_hex', 'hex'), 'UTF8')) \\gexec
\\endif
SQL
}

# -X: no ~/.psqlrc; the script's own settings are all that apply.
script | "$PSQL" -X -f - || die "failed (see above); nothing was recorded, the next run applies again"
