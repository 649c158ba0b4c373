"""Settings read from the environment (see docs/running.md "Settings")."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told; environment names are INVENTORY_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="INVENTORY_", frozen=True, extra="ignore")

    # A libpq URL. None means the embedded default: a private cluster under data_dir.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("database_url", "DATABASE_URL")
    )
    data_dir: str | None = None
    # One fixed size: a pool that never shrinks never pays for a connect on the hot path.
    pool_size: int = Field(default=10, ge=1, le=1000)
    # How long a request waits for a connection before it is answered 503.
    pool_timeout: float = Field(default=5.0, gt=0)
    # How long a lost connection is retried with backoff before the slot is given up and
    # re-requested from scratch; keeps recovery after a long outage within seconds.
    pool_reconnect_timeout: float = Field(default=10.0, gt=0)
    retry_after_seconds: int = Field(default=1, ge=0)
    # DATABASE_URL is a PgBouncer in transaction pooling mode: statements are never prepared
    # on the server (the server connection changes between transactions, and PgBouncer 1.18
    # cannot carry them), and the service keeps no session state (docs/scaling.md).
    pgbouncer: bool = False
    # A streaming replica for exports, pages, GET /changes and reports; None: all on the
    # primary. It is used only while it answers and is at most read_max_lag_seconds behind.
    read_database_url: str | None = None
    read_max_lag_seconds: float = Field(default=5.0, ge=0)
    # How often each process asks the replica how far behind it is (one cheap query).
    read_probe_seconds: float = Field(default=1.0, gt=0)

    # Idempotency-Key (docs/api.md "Idempotency-Key"). Keys are honoured for at least
    # 24 h: the TTL cannot be set lower than the contract promises.
    idempotency_ttl_seconds: int = Field(default=86_400, ge=86_400)
    # How often each worker deletes expired keys (batched; several workers do not collide).
    idempotency_purge_interval_seconds: float = Field(default=600.0, gt=0)
    # How long a repeat waits for the first request with its key to finish (then replays)
    # before it gets 409 request_in_progress.
    idempotency_wait_seconds: float = Field(default=2.0, gt=0)
    # Attempts for a unit of work that hits a serialization failure or deadlock before 503.
    conflict_attempts: int = Field(default=4, ge=1, le=20)

    # --- Access (docs/api.md "Access", docs/security.md). ---
    # Comma-separated bearer tokens; unset (None) means none. Set but empty is a start-up
    # error (app/core/access.py). SecretStr keeps them out of any repr or log line.
    api_tokens: SecretStr | None = None
    read_tokens: SecretStr | None = None
    # A file of read-write tokens (app/core/access.py token_file): read at start-up, and made with
    # a new token, readable by its owner only, when missing. docker-compose.yml sets it.
    # Unset or empty: no file.
    api_token_file: str | None = None
    # With no tokens the API answers only on loopback, unless this says an open API is meant.
    allow_open: bool = False
    # Request body limits in bytes: every body but the import's, and the import (streamed).
    json_max_bytes: int = Field(default=1 << 20, ge=1)
    import_max_bytes: int = Field(default=1 << 30, ge=1)
    # A request body that stalls this long (between two chunks, or a JSON body not complete
    # by then) is cut off with 408: a slow client cannot pin a worker or a pool connection.
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    # JSON bodies of requests without a checked token (an open API; a path no token guards)
    # read at once per process; more wait up to the body timeout, then get 503 server_busy.
    unauthenticated_bodies: int = Field(default=16, ge=1)
    # A response write the client does not take within this long ends the response: a
    # client that stops reading cannot pin a pool connection, a COPY or a bulk slot.
    send_timeout_seconds: float = Field(default=30.0, gt=0)
    # The level of the JSON log lines on stdout (one per request at INFO).
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # Bulk work (exports, imports): at most this many pool connections at once per process,
    # capped below pool_size so lookups and writes always find a connection.
    bulk_connections: int = Field(default=3, ge=1)
    # Of those, at most this many for one token (an open API's clients are not counted
    # apart): one credential never holds every slot.
    bulk_per_credential: int = Field(default=2, ge=1)
    # A bulk response (an export, the movement list, the movements report) or an import
    # body whose client moves fewer bytes than this per second spent waiting on it is cut
    # off; bulk_grace_seconds of waiting are in hand, and fast stretches earn no more.
    bulk_min_bytes_per_second: int = Field(default=128 * 1024, ge=1)
    bulk_grace_seconds: float = Field(default=10.0, gt=0)

    # --- The change log, its stream and webhooks (docs/api.md "GET /changes", "Webhooks"). ---
    # A direct connection for LISTEN (PgBouncer in transaction mode cannot carry one); None
    # means the database URL. One such connection per process, whatever the number of streams.
    listen_database_url: str | None = None
    # Events are kept at least this long after their change (then purged in batches); the
    # database's own floor (product_changes_purged.retention_days) wins when longer.
    changes_retention_days: int = Field(default=30, ge=1)
    changes_purge_interval_seconds: float = Field(default=600.0, gt=0)
    # How often the process holding the sequencer role (one at a time) looks, from inside
    # the server, for what was committed since; writers do not notify. A committed change
    # reaches the open streams about this long after its commit at most, well under the 1 s
    # promised. Behind PgBouncer without a direct URL for LISTEN, every process looks this
    # often, with a query.
    changes_poll_seconds: float = Field(default=0.2, gt=0, le=0.5)
    # A comment line on every open stream at least this often (docs/api.md: at least every 15 s).
    stream_heartbeat_seconds: float = Field(default=10.0, gt=0, le=15)
    # Change streams one token may hold open at once per process; more are 503 server_busy.
    streams_per_credential: int = Field(default=32, ge=1)
    # Webhooks: the first retry after this long, doubling, for at least 24 h.
    webhook_retry_seconds: float = Field(default=5.0, gt=0)
    # One attempt's limit, from connecting to the last header of the answer.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Subscriptions one process serves at once (each in a lane of its own; the database
    # allows 100, so by default every subscription has one), and attempts in flight for one
    # subscription: a slow or dead receiver holds its own lane, never another's.
    webhook_concurrency: int = Field(default=100, ge=1)
    webhook_per_receiver: int = Field(default=4, ge=1)
    # Webhook URLs resolving to loopback, private, link-local or metadata addresses are
    # refused unless this is set (a receiver on the same host or network, on purpose).
    webhook_allow_private: bool = False
