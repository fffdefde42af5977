"""Run one pipeline on one series: load, volume, model, writers, files.

This is the function the Celery task calls. It is pure compute plus file
writes into the job's output folder: no sockets, no state DB, no Celery. It
does not write ``manifest.json``; the task does that last, from the
:class:`~pipelines.manifest.JobManifest` returned here.

Every result file is written atomically (temporary file in the same folder,
fsync, rename, fsync of the folder), and the result UIDs are deterministic, so
a redelivered task overwrites its own results with the same objects.

Refusals (:class:`~pipelines.errors.PipelineError` and its subclasses)
propagate; the task turns them into a SKIPPED or FAILED manifest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pipelines.algorithms import Algorithm, get_builtin
from pipelines.errors import PipelineConfigError, UnsupportedInput
from pipelines.load import load_series
from pipelines.manifest import JobManifest, ManifestStatus, OutputObject
from pipelines.spec import ModelKind, OutputKind, PipelineSpec
from pipelines.uids import result_uids
from pipelines.volume import RegionStats, to_volume
from pipelines.writers import write_seg, write_sr

__all__ = ["OUTPUT_FILES", "clear_model_cache", "run_pipeline"]

logger = logging.getLogger(__name__)

#: File name of each output kind inside the job's output folder.
OUTPUT_FILES = {OutputKind.SEG: "seg.dcm", OutputKind.SR: "sr.dcm"}

# Loaded models by (kind, name or path), per process: a worker keeps its models
# loaded between jobs (a MONAI bundle takes seconds to load).
_MODELS: dict[tuple[str, str], Algorithm] = {}


def run_pipeline(
    spec: PipelineSpec, input_paths: Sequence[Path], output_dir: Path, job_id: int
) -> JobManifest:
    """Run a pipeline on a series and write its result objects.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline definition.
    input_paths : Sequence[pathlib.Path]
        The series' files, one per slice, in any order.
    output_dir : pathlib.Path
        The job's output folder; created if missing.
    job_id : int
        The node's job ID, copied into the manifest.

    Returns
    -------
    JobManifest
        Status DONE, the written objects, measurements such as
        ``"body.volume_ml"`` and ``"body.mean_hu"``, and ``timings_s`` for
        ``load``, ``infer`` and ``write``.

    Raises
    ------
    PipelineConfigError
        If the model kind is not supported, the built-in algorithm is unknown,
        the model does not produce a label of the definition, or the definition
        asks for an SR without a SEG.
    UnsupportedInput
        If the series is not for this pipeline (see :func:`pipelines.load.load_series`),
        or the model found none of the labels.
    InconsistentGeometry
        If the slices do not form a volume.
    PipelineError
        For any other deliberate refusal.
    """
    if OutputKind.SR in spec.outputs and OutputKind.SEG not in spec.outputs:
        raise PipelineConfigError(
            f"pipeline {spec.name!r}: output 'sr' references the SEG, so it needs 'seg' too"
        )
    model = _model(spec)

    started = time.perf_counter()
    volume = to_volume(load_series(input_paths))
    loaded = time.perf_counter()

    masks = model(volume)
    missing = [label.name for label in spec.labels if label.name not in masks]
    if missing:
        raise PipelineConfigError(
            f"the model of pipeline {spec.name!r} does not produce label(s) {', '.join(missing)}"
        )
    stats: dict[str, RegionStats] = {
        label.name: volume.measure(masks[label.name]) for label in spec.labels
    }
    if all(s.voxels == 0 for s in stats.values()):
        raise UnsupportedInput("the model found none of the pipeline's labels in this series")
    inferred = time.perf_counter()

    uids = result_uids(spec.name, spec.version, (str(ds.SOPInstanceUID) for ds in volume.datasets))
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs: list[OutputObject] = []
    if OutputKind.SEG in spec.outputs:
        seg = write_seg(volume, masks, spec, uids)
        outputs.append(_write(seg, output_dir, OutputKind.SEG))
        if OutputKind.SR in spec.outputs:
            sr = write_sr(volume, masks, seg, spec, uids, stats)
            outputs.append(_write(sr, output_dir, OutputKind.SR))
    written = time.perf_counter()

    timings = {
        "load": loaded - started,
        "infer": inferred - loaded,
        "write": written - inferred,
    }
    logger.info(
        "job=%d pipeline=%s slices=%d outputs=%d load=%.3fs infer=%.3fs write=%.3fs",
        job_id,
        spec.name,
        volume.shape[0],
        len(outputs),
        timings["load"],
        timings["infer"],
        timings["write"],
    )
    return JobManifest(
        job_id=job_id,
        status=ManifestStatus.DONE,
        outputs=outputs,
        measurements=_flatten(stats),
        timings_s=timings,
    )


def clear_model_cache() -> None:
    """Forget every loaded model (tests; a worker keeps them for its lifetime)."""
    _MODELS.clear()


def _model(spec: PipelineSpec) -> Algorithm:
    """Return the pipeline's model, loading it once per process."""
    source = spec.model
    if source.kind is not ModelKind.BUILTIN:
        raise PipelineConfigError(
            f"pipeline {spec.name!r}: model kind {source.kind.value!r} is not supported by "
            "this version of dicom-node (only 'builtin')"
        )
    if source.name is None:  # PipelineSpec guarantees a name for builtin models.
        raise PipelineConfigError(f"pipeline {spec.name!r}: builtin model without a name")
    key = (source.kind.value, source.name)
    model = _MODELS.get(key)
    if model is None:
        model = get_builtin(source.name)
        _MODELS[key] = model
    return model


def _flatten(stats: dict[str, RegionStats]) -> dict[str, float]:
    """Measurements for the manifest: ``<label>.volume_ml`` and, if defined, ``<label>.mean_hu``."""
    flat: dict[str, float] = {}
    for name, value in stats.items():
        flat[f"{name}.volume_ml"] = value.volume_ml
        if value.mean_hu is not None:
            flat[f"{name}.mean_hu"] = value.mean_hu
    return flat


def _write(dataset: Dataset, folder: Path, kind: OutputKind) -> OutputObject:
    """Write a dataset atomically into ``folder`` and describe it for the manifest."""
    name = OUTPUT_FILES[kind]
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            pydicom.dcmwrite(fh, dataset, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return OutputObject(
        kind=kind,
        file=name,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
    )
