"""Run one pipeline on one series: load, model, writers, files.

Three kinds of pipeline (:class:`pipelines.spec.TaskKind`):

- **segmentation**: the series becomes one volume (:func:`pipelines.load.load_series`,
  :func:`pipelines.volume.to_volume`); the model gives a mask per label; the
  masks' outlines are traced once (:func:`pipelines.outline.trace`); the
  writers make what the job asks for: a SEG (BINARY or LABELMAP), a TID 1500 SR
  of volumes, means and planar regions, a burned-in Secondary Capture series,
  presentation states (GSPS), an RT Structure Set, a Key Object Selection of
  the findings' key images and an Encapsulated PDF report.
- **detection**: the series becomes one volume; a detection bundle's boxes at or
  above the pipeline's score threshold become findings on the source slices
  (:mod:`pipelines.detection`), written as one TID 1500 SR of regions, sizes and
  scores (:func:`pipelines.writers.write_detection_sr`).
- **classification**: each instance of a projection series (CR, DX, MG) is
  classified on its own (:func:`pipelines.radiograph.load_radiographs`); one
  TID 1500 SR holds, per image, the finding and its probability; a KOS flags
  the images with a finding; a PDF reports them.

Which kinds a job writes is the request's ``outputs`` (the union of what the
export destinations receive, computed by the node), else the pipeline's own
``outputs``; :meth:`pipelines.spec.PipelineSpec.producible` drops what the task
cannot write and adds the SEG an SR refers to.

For a bundle, the labels are resolved first (:func:`pipelines.bundle_check.pipeline_labels`:
the bundle's ``channel_def`` with codes from the label tables, the YAML's entries
winning); labels that came out empty are reported absent in the SR, and they and
labels without a standard code are listed in the manifest's ``notes``.

This is the function the Celery task calls. It is pure compute plus file
writes into the job's output folder: no sockets, no state DB, no Celery. It
does not write ``manifest.json``; the task does that last, from the
:class:`~pipelines.manifest.JobManifest` returned here.

Every result file is written atomically (temporary file in the same folder,
fsync, rename, fsync of the folder), and the result UIDs are deterministic, so
a redelivered task overwrites its own results with the same objects.

Each step runs inside :func:`pipelines.steps.step`, so a refusal or failure
names it ("load: ...", "model: ...", "write SEG: ..."). The source headers are
normalised (:func:`pipelines.headers.normalise_headers`) right after loading,
before any writer copies them. Refusals (:class:`~pipelines.errors.PipelineError`
and its subclasses, :class:`~pipelines.steps.StepFailed` for the unforeseen)
propagate; the task turns them into a SKIPPED or FAILED manifest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pipelines import models
from pipelines.bundle_check import pipeline_labels
from pipelines.errors import PipelineConfigError, UnsupportedInput
from pipelines.headers import HeaderFix, normalise_headers
from pipelines.labelmap import LabelMapMasks
from pipelines.load import load_series
from pipelines.manifest import JobManifest, ManifestStatus, OutputObject
from pipelines.outline import trace
from pipelines.radiograph import load_radiographs
from pipelines.spec import LabelSpec, OutputKind, PipelineSpec, SegmentationKind, TaskKind
from pipelines.steps import Step, step
from pipelines.uids import result_uids
from pipelines.volume import RegionStats, to_volume
from pipelines.writers import (
    classification_key_images,
    classification_report,
    exclusive_masks,
    segmentation_key_images,
    segmentation_report,
    write_classification_sr,
    write_detection_sr,
    write_gsps,
    write_kos,
    write_report_pdf,
    write_rtstruct,
    write_sc,
    write_seg,
    write_sr,
)

__all__ = ["OUTPUT_FILES", "clear_model_cache", "run_pipeline"]

logger = logging.getLogger(__name__)

#: File name of each output kind inside the job's output folder (SC and GSPS: one per
#: image, ``sc-0001.dcm``, ...).
OUTPUT_FILES = {
    OutputKind.SEG: "seg.dcm",
    OutputKind.SR: "sr.dcm",
    OutputKind.SC: "sc-{:04d}.dcm",
    OutputKind.GSPS: "gsps-{:04d}.dcm",
    OutputKind.RTSTRUCT: "rtstruct.dcm",
    OutputKind.KOS: "kos.dcm",
    OutputKind.PDF: "report.dcm",
}
# Kinds drawn from the masks' outlines.
_OUTLINED = {OutputKind.SR, OutputKind.GSPS, OutputKind.RTSTRUCT, OutputKind.KOS, OutputKind.PDF}


def run_pipeline(
    spec: PipelineSpec,
    input_paths: Sequence[Path],
    output_dir: Path,
    job_id: int,
    outputs: Collection[OutputKind] | None = None,
) -> JobManifest:
    """Run a pipeline on a series and write its result objects.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline definition.
    input_paths : Sequence[pathlib.Path]
        The series' files (slices or radiographs), in any order.
    output_dir : pathlib.Path
        The job's output folder; created if missing.
    job_id : int
        The node's job ID, copied into the manifest.
    outputs : Collection[OutputKind] or None
        The kinds to write; None or empty writes the pipeline's own ``outputs``.

    Returns
    -------
    JobManifest
        Status DONE, the written objects, measurements (``"body.volume_ml"``,
        ``"body.mean_hu"`` for a segmentation; ``"nodule.probability"``, the
        highest over the images, and ``"nodule.probability.<n>"`` per image for a
        classification) and ``timings_s`` for ``load``, ``infer`` and ``write``.

    Raises
    ------
    PipelineConfigError
        If the model cannot be loaded or does not produce a label of the
        definition.
    UnsupportedInput
        If the series is not for this pipeline (see :func:`pipelines.load.load_series`
        and :func:`pipelines.radiograph.load_radiographs`), or a segmentation
        found none of the labels.
    InconsistentGeometry
        If the slices do not form a volume.
    PipelineError
        For any other deliberate refusal.
    """
    resolution = pipeline_labels(spec)
    spec = spec.model_copy(update={"labels": list(resolution.labels)})
    kinds = spec.producible(outputs or spec.outputs)
    if spec.task is TaskKind.CLASSIFICATION:
        return _run_classification(spec, input_paths, output_dir, job_id, kinds)
    if spec.task is TaskKind.DETECTION:
        return _run_detection(spec, input_paths, output_dir, job_id)
    with step(Step.MODEL):
        model = models.segmenter(spec)
        digest = models.model_digest(spec)

    started = time.perf_counter()
    with step(Step.LOAD):
        volume = to_volume(load_series(input_paths))
        _log_fixes(job_id, normalise_headers(volume.datasets))
    loaded = time.perf_counter()

    with step(Step.MODEL):
        masks = model(volume)
        missing = [label.name for label in spec.labels if label.name not in masks]
        if missing:
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} does not produce label(s) "
                f"{', '.join(missing)}"
            )
        stats: dict[str, RegionStats]
        if isinstance(masks, LabelMapMasks):
            # One label per voxel already: measured in one pass, never one array per label.
            measured = masks.measure(volume)
            stats = {label.name: measured[label.name] for label in spec.labels}
        else:
            if spec.segmentation_type == SegmentationKind.LABELMAP:
                # A label map holds one label per voxel: measure what the SEG will hold.
                masks = exclusive_masks(spec, masks)
            stats = {label.name: volume.measure(masks[label.name]) for label in spec.labels}
        if all(s.voxels == 0 for s in stats.values()):
            raise UnsupportedInput("the model found none of the pipeline's labels in this series")
    empty = [label for label in spec.labels if stats[label.name].voxels == 0]
    notes = _notes(empty, resolution.unmapped)
    if volume.resampling is not None:
        # Measured on the grid; drawn on the slices the radiologist scrolls. The masks go
        # back onto the source planes once, for every writer.
        masks = {label.name: volume.on_source_planes(masks[label.name]) for label in spec.labels}
        volume = volume.source_view()
    inferred = time.perf_counter()

    uids = result_uids(
        spec.name, spec.version, (str(ds.SOPInstanceUID) for ds in volume.instances), digest
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs_written: list[OutputObject] = []
    outlines = trace(masks) if set(kinds) & _OUTLINED else None

    def many(kind: OutputKind, datasets: Sequence[Dataset]) -> None:
        for number, dataset in enumerate(datasets, start=1):
            name = OUTPUT_FILES[kind].format(number)
            outputs_written.append(_write(dataset, output_dir, kind, name))

    if OutputKind.SEG in kinds:
        with step(Step.WRITE_SEG):
            seg = write_seg(volume, masks, spec, uids)
            many(OutputKind.SEG, [seg])
        if OutputKind.SR in kinds:
            with step(Step.WRITE_SR):
                sr = write_sr(
                    volume, masks, seg, spec, uids, stats, outlines=outlines, absent=empty
                )
                many(OutputKind.SR, [sr])
    if OutputKind.SC in kinds:
        with step(Step.WRITE_SC):
            many(OutputKind.SC, write_sc(volume, masks, spec, uids))
    if outlines is not None:
        if OutputKind.GSPS in kinds:
            with step(Step.WRITE_GSPS):
                many(OutputKind.GSPS, write_gsps(volume, masks, spec, uids, outlines))
        if OutputKind.RTSTRUCT in kinds:
            with step(Step.WRITE_RTSTRUCT):
                many(OutputKind.RTSTRUCT, [write_rtstruct(volume, masks, spec, uids, outlines)])
        keys = segmentation_key_images(spec, outlines, volume.datasets)
        if OutputKind.KOS in kinds:
            if keys:
                with step(Step.WRITE_KOS):
                    many(OutputKind.KOS, [write_kos(keys, spec, uids)])
            else:
                logger.info("job=%d no finding to flag: no KOS", job_id)
        if OutputKind.PDF in kinds:
            with step(Step.WRITE_PDF):
                report = segmentation_report(volume, masks, spec, stats, outlines, keys)
                many(OutputKind.PDF, [write_report_pdf(report, spec, uids)])
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
        len(outputs_written),
        timings["load"],
        timings["infer"],
        timings["write"],
    )
    return JobManifest(
        job_id=job_id,
        status=ManifestStatus.DONE,
        outputs=outputs_written,
        measurements=_flatten(stats),
        timings_s=timings,
        notes=notes,
    )


def _notes(empty: list[LabelSpec], unmapped: Sequence[str]) -> list[str]:
    """What the admin should know: labels reported absent, labels without a standard code."""
    notes: list[str] = []
    if empty:
        names = ", ".join(label.name for label in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        notes.append(f"{len(empty)} label(s) came out empty, reported absent in the SR: "
                     f"{names}{more}")  # fmt: skip
    if unmapped:
        names = ", ".join(unmapped[:10])
        more = f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else ""
        notes.append(f"{len(unmapped)} label(s) have no standard code (private scheme "
                     f"99DCMNODE): {names}{more}")  # fmt: skip
    return notes


def _run_detection(
    spec: PipelineSpec, input_paths: Sequence[Path], output_dir: Path, job_id: int
) -> JobManifest:
    """Detect on the volume and write one SR of the findings (regions on the source slices)."""
    with step(Step.MODEL):
        detect = models.detector(spec)
        digest = models.model_digest(spec)
    started = time.perf_counter()
    with step(Step.LOAD):
        volume = to_volume(load_series(input_paths))
        _log_fixes(job_id, normalise_headers(volume.datasets))
    loaded = time.perf_counter()
    with step(Step.MODEL):
        found = detect(volume)
    inferred = time.perf_counter()
    uids = result_uids(
        spec.name, spec.version, (str(ds.SOPInstanceUID) for ds in volume.instances), digest
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with step(Step.WRITE_SR):
        sr = write_detection_sr(volume, found, spec, uids)
        outputs = [_write(sr, output_dir, OutputKind.SR, OUTPUT_FILES[OutputKind.SR])]
    written = time.perf_counter()
    measurements: dict[str, float] = {}
    for label in spec.labels:
        mine = [f for f in found if f.label.name == label.name]
        measurements[f"{label.name}.count"] = float(len(mine))
        if mine:
            measurements[f"{label.name}.max_score"] = max(f.score for f in mine)
    timings = {"load": loaded - started, "infer": inferred - loaded, "write": written - inferred}
    logger.info(
        "job=%d pipeline=%s findings=%d load=%.3fs infer=%.3fs write=%.3fs",
        job_id, spec.name, len(found), timings["load"], timings["infer"], timings["write"],
    )  # fmt: skip
    notes = [] if found else [
        f"no finding scored {spec.detection.score_threshold} or more; the SR says absent"
    ]  # fmt: skip
    return JobManifest(
        job_id=job_id,
        status=ManifestStatus.DONE,
        outputs=outputs,
        measurements=measurements,
        timings_s=timings,
        notes=notes,
    )


def _run_classification(
    spec: PipelineSpec,
    input_paths: Sequence[Path],
    output_dir: Path,
    job_id: int,
    kinds: Collection[OutputKind],
) -> JobManifest:
    """Classify each radiograph of the series and write the SR, KOS and report asked for."""
    with step(Step.MODEL):
        classify = models.classifier(spec)
        digest = models.model_digest(spec)
    started = time.perf_counter()
    with step(Step.LOAD):
        images = load_radiographs(input_paths)
        _log_fixes(job_id, normalise_headers(image.header for image in images))
    loaded = time.perf_counter()
    with step(Step.MODEL):
        probabilities = [classify(image) for image in images]
    inferred = time.perf_counter()
    uids = result_uids(
        spec.name, spec.version, (str(i.header.SOPInstanceUID) for i in images), digest
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs: list[OutputObject] = []
    if OutputKind.SR in kinds:
        with step(Step.WRITE_SR):
            sr = write_classification_sr(images, probabilities, spec, uids)
            outputs.append(_write(sr, output_dir, OutputKind.SR, OUTPUT_FILES[OutputKind.SR]))
    keys = classification_key_images(spec, probabilities, [image.header for image in images])
    if OutputKind.KOS in kinds and keys:
        with step(Step.WRITE_KOS):
            kos = write_kos(keys, spec, uids)
            outputs.append(_write(kos, output_dir, OutputKind.KOS, OUTPUT_FILES[OutputKind.KOS]))
    if OutputKind.PDF in kinds:
        with step(Step.WRITE_PDF):
            report = write_report_pdf(
                classification_report(images, probabilities, spec, keys), spec, uids
            )
            outputs.append(_write(report, output_dir, OutputKind.PDF, OUTPUT_FILES[OutputKind.PDF]))
    written = time.perf_counter()
    measurements: dict[str, float] = {}
    for label in spec.labels:
        values = [p[label.name] for p in probabilities]
        measurements[f"{label.name}.probability"] = max(values)
        for number, value in enumerate(values, start=1):
            measurements[f"{label.name}.probability.{number}"] = value
    timings = {"load": loaded - started, "infer": inferred - loaded, "write": written - inferred}
    logger.info(
        "job=%d pipeline=%s images=%d load=%.3fs infer=%.3fs write=%.3fs",
        job_id,
        spec.name,
        len(images),
        timings["load"],
        timings["infer"],
        timings["write"],
    )
    return JobManifest(
        job_id=job_id,
        status=ManifestStatus.DONE,
        outputs=outputs,
        measurements=measurements,
        timings_s=timings,
    )


def _log_fixes(job_id: int, fixes: Sequence[HeaderFix]) -> None:
    """Say which source attributes were normalised (keywords only, never values)."""
    if fixes:
        logger.info(
            "job=%d source headers normalised: %s", job_id, "; ".join(str(f) for f in fixes)
        )


def clear_model_cache() -> None:
    """Forget every loaded model (tests; a worker keeps them for its lifetime)."""
    models.clear_model_cache()


def _flatten(stats: dict[str, RegionStats]) -> dict[str, float]:
    """Measurements for the manifest: ``<label>.volume_ml`` and, if defined, ``<label>.mean_hu``."""
    flat: dict[str, float] = {}
    for name, value in stats.items():
        flat[f"{name}.volume_ml"] = value.volume_ml
        if value.mean_hu is not None:
            flat[f"{name}.mean_hu"] = value.mean_hu
    return flat


def _write(dataset: Dataset, folder: Path, kind: OutputKind, name: str) -> OutputObject:
    """Write a dataset atomically into ``folder`` and describe it for the manifest."""
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
