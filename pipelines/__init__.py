"""DICOM series in, model results out as DICOM datasets.

Importing this package is cheap and imports no torch: the node reads pipeline
definitions (:mod:`pipelines.spec`) and manifests (:mod:`pipelines.manifest`)
without loading MONAI. Workers import :mod:`pipelines.run`, which does.
"""
