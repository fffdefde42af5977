"""Alembic migrations of the state database (one file per schema change, in ``versions/``).

:mod:`dicom_node.state.migrate` runs them; ``alembic.ini`` at the repository
root lets a developer write the next one (see ``docs/operations.md``).
"""
