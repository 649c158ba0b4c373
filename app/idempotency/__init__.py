"""Idempotency-Key: exactly-once writes per credential, replays, the purge."""
