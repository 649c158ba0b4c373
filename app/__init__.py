"""Inventory API: a PostgreSQL-first product and stock service."""
