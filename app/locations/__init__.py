"""Locations, the stock at each, and transfers between them."""
