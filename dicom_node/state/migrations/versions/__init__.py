"""Schema revisions, oldest first: ``0001`` is the schema the node had before Alembic."""
