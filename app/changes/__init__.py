"""The change log: its pages, its live stream, and the work that keeps it (numbering, retention)."""
