"""Products: their CRUD, stock adjustments and movements."""
