"""Bulk import of products and stock: parsing, staging and diagnosis."""
