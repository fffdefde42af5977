"""dicom-node: receives studies over DICOM, runs pipelines on workers, returns results.

Importing this package connects nowhere and imports no torch (DESIGN.md: the node
owns networking, the spool and the state DB; compute lives in ``pipelines``).
"""

__version__ = "0.1.0"
