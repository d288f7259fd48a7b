"""The store's reads and writes, one module per section of tables; :mod:`stores.tables`
re-exports every public name (``from stores import tables; tables.insert_run(...)``)."""
