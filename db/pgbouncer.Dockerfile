# PgBouncer for docker-compose.yml's scale profile: Debian 12's package (1.18, as ./run.sh scale
# uses), configured at start by db/pgbouncer.sh from the environment (no password in the image).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer \
    && rm -rf /var/lib/apt/lists/*
COPY db/pgbouncer.sh /usr/local/bin/inventory-pgbouncer.sh
# The package's own user; PgBouncer refuses to run as root.
USER postgres
EXPOSE 6432
CMD ["bash", "/usr/local/bin/inventory-pgbouncer.sh", "run"]
