# The Inventory API for docker-compose.yml: uvicorn with two workers on port 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
RUN useradd --system --uid 10001 --user-group --home-dir /srv --no-create-home inventory
# Where docker-compose.yml keeps the generated API token (a volume: a new one takes this
# directory's owner and mode).
RUN mkdir -m 0700 /srv/tokens && chown inventory:inventory /srv/tokens

# Requirements first: code changes then reuse the installed-packages layer.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app/ app/
COPY schema.sql .

USER inventory
EXPOSE 8000
# Metrics of both workers summed (docs/running.md "Metrics"); the directory is emptied on every start.
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/inventory-metrics
# Binds 0.0.0.0 and sets no INVENTORY_ALLOW_OPEN: run bare, with no tokens, the service refuses
# to start rather than serve an open API to whatever network reaches the container. Give it
# INVENTORY_API_TOKENS or INVENTORY_API_TOKEN_FILE (docker-compose.yml does: a token made on
# the first start), or INVENTORY_ALLOW_OPEN=1 where only trusted clients reach the port.
# SIGTERM (docker stop) lets requests in flight finish for up to 20 s, then closes the pool;
# give `docker stop` more than that (compose: stop_grace_period). The app logs each request.
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec uvicorn app.main:app --host 0.0.0.0 --port 8000 --workers 2 --timeout-graceful-shutdown 20 --no-access-log"]
