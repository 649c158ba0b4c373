"""Reservations: stock held for an order, never more than a location has."""
