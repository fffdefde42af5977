"""The Celery worker: runs pipelines on jobs and writes results to the spool.

It needs the broker and the spool and nothing else; it never writes the state
DB and never talks DICOM to the archive (DESIGN.md).
"""
