"""The product listing: search, keyset pages and exports."""
