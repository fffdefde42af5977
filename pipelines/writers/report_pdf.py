"""The report a person reads: one Encapsulated PDF (PS3.3 A.45.1) per job.

For PACS and EHR viewers that show PDFs but no structured objects. The PDF
(drawn with fpdf2) holds, in this order:

1. the status: "NOT FOR DIAGNOSIS" unless the pipeline is cleared for clinical
   use (``cleared_for_clinical_use``), and that no physician has reviewed it;
2. patient and study (the report is a clinical document inside the study; it
   never reaches a log);
3. the algorithm: its name, the pipeline and its version, the model's digest
   and Device UID, the node's version;
4. the findings and measurements, one row each (a segmentation's volume, mean
   and largest cross-section; a classification's probability and presence);
5. the key images with the overlay (:func:`pipelines.writers.sc.burn_in`), or
   the radiographs on which a finding is present.

The DICOM object is built with pydicom on highdicom's SOP base: Encapsulated
Document Series (Modality DOC), SC Equipment (Conversion Type SYN),
Encapsulated Document (MIME type application/pdf, Burned In Annotation YES: the
pages name the patient), its source images, and the algorithm's Contributing
Equipment item.
"""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from fpdf import FPDF
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from pipelines.outline import Outlines
from pipelines.radiograph import Radiograph
from pipelines.spec import PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import RegionStats, Volume
from pipelines.writers.instance import new_instance
from pipelines.writers.kos import KeyImage
from pipelines.writers.sc import burn_in, display_window, label_colours
from pipelines.writers.seg import software_versions

__all__ = [
    "REPORT_SERIES_NUMBER",
    "Report",
    "classification_report",
    "segmentation_report",
    "write_report_pdf",
]

logger = logging.getLogger(__name__)

#: Series Number of the report.
REPORT_SERIES_NUMBER = 9007
#: Document Title of every report.
TITLE = "AI result report"
# At most this many key images are drawn; the table lists every finding.
_MAX_IMAGES = 6
# (18748-4, LN, "Diagnostic imaging report"): what kind of document this is.
_CONCEPT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")


@dataclass(frozen=True, slots=True)
class Report:
    """What a report says, independent of how it is drawn.

    Attributes
    ----------
    columns : tuple[str, ...]
        Headings of the findings table.
    rows : list[tuple[str, ...]]
        One row per finding or measurement.
    images : list[tuple[numpy.ndarray, str]]
        Key images (uint8 RGB or grey) with their captions.
    sources : list[pydicom.dataset.Dataset]
        The source images the report is about (headers).
    note : str
        A sentence under the table (e.g. that nothing reached its threshold).
    """

    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    images: Sequence[tuple[npt.NDArray[np.uint8], str]] = ()
    sources: Sequence[Dataset] = ()
    note: str = ""


def segmentation_report(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    spec: PipelineSpec,
    measurements: Mapping[str, RegionStats],
    outlines: Outlines,
    keys: Sequence[KeyImage],
) -> Report:
    """The report of a segmentation: each structure's measurements and its key images.

    Parameters
    ----------
    volume : Volume
        The source volume.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name.
    spec : PipelineSpec
        The pipeline (labels, colours).
    measurements : Mapping[str, RegionStats]
        Volume and mean per label name.
    outlines : Outlines
        The masks' outlines (cross-sections, key slices).
    keys : Sequence[KeyImage]
        The findings' key images; when the pipeline marks no finding, each
        structure's largest cross-section is shown instead.

    Returns
    -------
    Report
        Rows of structure, volume, mean and largest cross-section.
    """
    pixel_mm2 = float(volume.spacing[1] * volume.spacing[2])
    rows = []
    shown: dict[int, list[str]] = {key.index: list(key.findings) for key in keys}
    for label in spec.labels:
        stats = measurements[label.name]
        k = outlines.representative_slice(label.name)
        if k is None:
            rows.append((label.label, label.type.meaning, "not found", "", ""))
            continue
        mean = f"{stats.mean_hu:.1f}" if stats.mean_hu is not None else ""
        area = outlines.areas[label.name][k] * pixel_mm2
        number = volume.datasets[k].get("InstanceNumber", k + 1)
        rows.append(
            (
                label.label,
                label.type.meaning,
                f"{stats.volume_ml:.1f}",
                mean,
                f"{area:.0f} mm2 (image {number})",
            )
        )
        if not keys:
            shown.setdefault(k, []).append(label.label)
    colours = label_colours(spec)
    window = display_window(volume)
    images = []
    for k, names in sorted(shown.items())[:_MAX_IMAGES]:
        number = volume.datasets[k].get("InstanceNumber", k + 1)
        present = {name: mask for name, mask in masks.items() if mask[k].any()}
        images.append(
            (burn_in(volume, present, colours, k, window), f"Image {number}: {', '.join(names)}")
        )
    return Report(
        columns=("Structure", "Finding", "Volume (mL)", "Mean (HU)", "Largest cross-section"),
        rows=rows,
        images=images,
        sources=list(volume.instances),
    )


def classification_report(
    images: Sequence[Radiograph],
    probabilities: Sequence[Mapping[str, float]],
    spec: PipelineSpec,
    keys: Sequence[KeyImage],
) -> Report:
    """The report of a classification: each image's findings and the images that show one.

    Parameters
    ----------
    images : Sequence[Radiograph]
        The classified radiographs.
    probabilities : Sequence[Mapping[str, float]]
        Per image, the probability of each label by name.
    spec : PipelineSpec
        The pipeline (labels, thresholds).
    keys : Sequence[KeyImage]
        The images on which a finding is present.

    Returns
    -------
    Report
        One row per image and label.
    """
    rows = []
    for index, (image, result) in enumerate(zip(images, probabilities, strict=True)):
        number = image.header.get("InstanceNumber", index + 1)
        view = image.view_position or "-"
        for label in spec.labels:
            value = result[label.name]
            rows.append(
                (
                    f"Image {number} ({view})",
                    label.label,
                    f"{value:.3f}",
                    "present" if value >= label.threshold else "absent",
                    f"{label.threshold:.2f}",
                )
            )
    pictures = []
    for key in keys[:_MAX_IMAGES]:
        array = images[key.index].array
        low, high = np.percentile(array, [1, 99])
        grey = np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
        number = key.header.get("InstanceNumber", key.index + 1)
        pictures.append(
            (np.asarray(grey, dtype=np.uint8), f"Image {number}: {', '.join(key.findings)}")
        )
    return Report(
        columns=("Image", "Finding", "Probability", "Result", "Threshold"),
        rows=rows,
        images=pictures,
        sources=[image.header for image in images],
        note="" if keys else "No finding reached its threshold on any image.",
    )


def write_report_pdf(
    report: Report,
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = REPORT_SERIES_NUMBER,
) -> Dataset:
    """Draw the report as a PDF and wrap it in an Encapsulated PDF object.

    Parameters
    ----------
    report : Report
        What to say (:func:`segmentation_report`, :func:`classification_report`).
    spec : PipelineSpec
        The pipeline (algorithm, version, clearance).
    uids : ResultUIDs
        Where the UIDs come from (``report-series``, ``report``) and the Device UID.
    series_number : int
        Series Number of the report.

    Returns
    -------
    pydicom.dataset.Dataset
        The Encapsulated PDF object.

    Raises
    ------
    ValueError
        If the report names no source image.
    """
    if not report.sources:
        raise ValueError("a report needs the source images it is about")
    first = report.sources[0]
    now = datetime.datetime.now()
    pdf = _draw(report, spec, uids, first, now)
    document = new_instance(
        first,
        spec,
        uids,
        role="report",
        sop_class_uid=EncapsulatedPDFStorage,
        modality="DOC",
        series_number=series_number,
        created=now,
    )
    document.ConversionType = "SYN"  # SC Equipment: made by software, not scanned
    document.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    document.BurnedInAnnotation = "YES"  # the pages name the patient
    document.DocumentTitle = TITLE
    document.ConceptNameCodeSequence = [_CONCEPT]
    document.VerificationFlag = "UNVERIFIED"
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    sources = []
    for header in report.sources:
        item = Dataset()
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        sources.append(item)
    document.SourceInstanceSequence = sources
    document.EncapsulatedDocumentLength = len(pdf)
    # OB values have an even length (PS3.5 7.1); the length above is the PDF's own.
    document.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    logger.info("report rows=%d images=%d bytes=%d", len(report.rows), len(report.images), len(pdf))
    return document


def _draw(
    report: Report,
    spec: PipelineSpec,
    uids: ResultUIDs,
    first: Dataset,
    now: datetime.datetime,
) -> bytes:
    """The PDF's bytes: status, patient and study, algorithm, findings, key images."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(now)
    pdf.set_title(TITLE)
    pdf.set_creator(f"dicom-node {spec.name} {spec.version}")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("helvetica", "B", 16)
    pdf.cell(
        0, 10, _text(f"{TITLE}: {spec.description or spec.name}"), new_x="LMARGIN", new_y="NEXT"
    )
    pdf.set_font("helvetica", "B", 12)
    if spec.cleared_for_clinical_use:
        status = "AI-generated result. Not reviewed by a physician."
    else:
        status = "NOT FOR DIAGNOSIS. AI-generated result, not reviewed by a physician."
    pdf.set_text_color(180, 0, 0)
    pdf.multi_cell(0, 7, _text(status), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    facts = (
        ("Patient", f"{first.get('PatientName', '')}  ID {first.get('PatientID', '')}"),
        (
            "Birth date / sex",
            f"{first.get('PatientBirthDate', '')} / {first.get('PatientSex', '')}",
        ),
        ("Study", f"{first.get('StudyDescription', '')}  {first.get('StudyDate', '')}"),
        ("Accession number", str(first.get("AccessionNumber", ""))),
        ("Series", f"{first.get('SeriesDescription', '')} ({first.get('Modality', '')})"),
        ("Algorithm", spec.algorithm_name),
        ("Pipeline, version", f"{spec.name} {spec.version}"),
        ("Model digest", uids.model_digest[:16] or "-"),
        ("Device UID", uids.device_uid),
        ("Made by", f"{', '.join(software_versions(spec))} on {now:%Y-%m-%d %H:%M}"),
    )
    pdf.set_font("helvetica", size=10)
    for name, value in facts:
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(45, 6, _text(name))
        pdf.set_font("helvetica", size=10)
        pdf.multi_cell(0, 6, _text(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font("helvetica", "B", 12)
    pdf.cell(0, 8, "Findings and measurements", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    with pdf.table(first_row_as_headings=True) as table:
        for row in [report.columns, *report.rows]:
            cells = table.row()
            for value in row:
                cells.cell(_text(value))
    if report.note:
        pdf.ln(2)
        pdf.multi_cell(0, 6, _text(report.note), new_x="LMARGIN", new_y="NEXT")
    if report.images:
        pdf.add_page()
        pdf.set_font("helvetica", "B", 12)
        pdf.cell(0, 8, "Key images", new_x="LMARGIN", new_y="NEXT")
        width = (pdf.epw - 10) / 2
        for pair in range(0, len(report.images), 2):
            y = pdf.get_y()
            heights = [width * p.shape[0] / p.shape[1] for p, _ in report.images[pair : pair + 2]]
            if y + max(heights) + 8 > pdf.h - pdf.b_margin:
                pdf.add_page()
                y = pdf.get_y()
            for column, (pixels, caption) in enumerate(report.images[pair : pair + 2]):
                x = pdf.l_margin + column * (width + 10)
                pdf.image(_png(pixels), x=x, y=y, w=width, h=heights[column])
                pdf.set_xy(x, y + heights[column] + 1)
                pdf.set_font("helvetica", size=9)
                pdf.cell(width, 5, _text(caption))
            pdf.set_xy(pdf.l_margin, y + max(heights) + 8)
    return bytes(pdf.output())


def _png(pixels: npt.NDArray[np.uint8]) -> io.BytesIO:
    """A key image as PNG bytes for the PDF."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def _text(value: object) -> str:
    """Text for the PDF's core fonts (Latin-1); anything else becomes '?'."""
    return str(value).encode("latin-1", "replace").decode("latin-1")
