"""A synthetic chest radiograph (Digital X-Ray) phantom, with or without a finding.

The demo, the tests and the training script of the shipped DX classifier need
chest radiographs without patient data and without downloads. Each image is a
PA projection drawn from smooth shapes whose sizes and positions vary with a
seed: the body, two lungs, the heart, the spine and ribs. A *finding* is a
round opacity (a nodule) of random size and contrast inside one lung.

Pixel values follow a For Presentation DX image (PS3.3 A.26): MONOCHROME2,
12 bits stored, more attenuation is brighter (Pixel Intensity Relationship
LOG, sign +1), so lungs are dark and bone is bright. The image's columns run
to the patient's left and its rows to the feet (Patient Orientation ``L\\F``),
as a PA chest is read.

Only numpy and pydicom are used: ``dicom_node`` never imports torch.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

__all__ = ["ChestRadiographPhantom", "RadiographStudy", "draw_chest_radiograph"]

#: Stored values use 12 of 16 bits.
_BITS_STORED = 12
_MAX_VALUE = (1 << _BITS_STORED) - 1


def _ellipse(
    u: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    centre: tuple[float, float],
    radii: tuple[float, float],
    edge: float,
) -> npt.NDArray[np.float32]:
    """Soft indicator of an ellipse: 1 inside, 0 outside, a sigmoid ramp of width ``edge``."""
    r = np.sqrt(((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2)
    # Clipped so far-away pixels give exactly 0 without overflowing exp().
    ramp = np.clip((r - 1.0) / edge, -40.0, 40.0)
    return np.asarray(1.0 / (1.0 + np.exp(ramp)), dtype=np.float32)


def draw_chest_radiograph(
    size: int, finding: bool, rng: np.random.Generator, noise: float = 0.02
) -> npt.NDArray[np.float32]:
    """Draw one PA chest radiograph in [0, 1], brighter where more attenuating.

    Parameters
    ----------
    size : int
        Rows and columns.
    finding : bool
        Whether to add a nodule in one lung.
    rng : numpy.random.Generator
        Source of the anatomy's variation, the finding and the noise.
    noise : float
        Standard deviation of the added Gaussian noise.

    Returns
    -------
    numpy.ndarray
        float32 ``(size, size)``, indexed ``[row, column]``; column 0 is the
        patient's right.

    Raises
    ------
    ValueError
        If ``size`` is below 32.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    u = axis[np.newaxis, :]  # -1 patient right ... +1 patient left
    v = axis[:, np.newaxis]  # -1 head ... +1 feet
    edge = 0.02
    width = float(rng.uniform(0.78, 0.92))
    thickness = 0.55 * _ellipse(u, v, (0.0, 0.1), (width, 1.05), edge)
    lung_width = float(rng.uniform(0.2, 0.27))
    lung_height = float(rng.uniform(0.42, 0.55))
    lung_y = float(rng.uniform(-0.12, 0.0))
    lungs = []
    for side in (-1.0, 1.0):
        centre = (side * float(rng.uniform(0.3, 0.38)), lung_y + float(rng.uniform(-0.03, 0.03)))
        lungs.append((centre, (lung_width, lung_height)))
        thickness -= 0.32 * _ellipse(u, v, centre, (lung_width, lung_height), edge)
    heart = (float(rng.uniform(0.03, 0.12)), lung_y + lung_height * 0.55)
    thickness += 0.22 * _ellipse(u, v, heart, (float(rng.uniform(0.18, 0.25)), 0.2), edge * 2)
    thickness += 0.25 * _ellipse(u, v, (0.0, 0.1), (0.055, 1.0), edge)  # spine
    # Ribs: curved bright bands across the upper chest.
    phase = float(rng.uniform(0.0, 2 * np.pi))
    ribs = np.sin((v + 0.35 * u**2) * float(rng.uniform(26.0, 32.0)) + phase) > 0.55
    chest = _ellipse(u, v, (0.0, lung_y), (width * 0.95, lung_height * 1.15), edge)
    thickness += 0.06 * ribs.astype(np.float32) * chest
    # The finding is drawn either way, so an image with and without it differ only there.
    centre, radii = lungs[int(rng.integers(0, 2))]
    angle = float(rng.uniform(0.0, 2 * np.pi))
    reach = float(np.sqrt(rng.uniform(0.0, 0.5)))
    where = (
        centre[0] + reach * radii[0] * np.cos(angle),
        centre[1] + reach * radii[1] * np.sin(angle),
    )
    radius = float(rng.uniform(0.05, 0.09))
    contrast = float(rng.uniform(0.14, 0.24))
    if finding:
        distance2 = ((u - where[0]) ** 2 + (v - where[1]) ** 2) / radius**2
        thickness += contrast * np.exp(-1.5 * distance2 * distance2).astype(np.float32)
    image = 0.1 + np.clip(thickness, 0.0, None) * 1.05
    image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    clipped: npt.NDArray[np.float32] = np.clip(image, 0.0, 1.0).astype(np.float32)
    return clipped


@dataclass(frozen=True, slots=True)
class RadiographStudy:
    """A phantom DX study written to disk.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    series_uid : str
        Series Instance UID of the DX series.
    paths : tuple[pathlib.Path, ...]
        One file per image.
    findings : tuple[bool, ...]
        Whether each image holds a nodule.
    """

    study_uid: str
    series_uid: str
    paths: tuple[Path, ...]
    findings: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class ChestRadiographPhantom:
    """Parameters of synthetic PA chest radiographs.

    Parameters
    ----------
    size : int
        Rows and columns of each image.
    pixel_spacing_mm : float
        Imager Pixel Spacing; the detector is ``size * pixel_spacing_mm`` wide.
    noise : float
        Standard deviation of the noise, as a fraction of the full range.
    seed : int
        Seed of the anatomy, the findings and the noise.
    """

    size: int = 256
    pixel_spacing_mm: float = 1.4
    noise: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32, got {self.size}")
        if self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm must be positive, got {self.pixel_spacing_mm}")

    def image(self, index: int, finding: bool) -> npt.NDArray[np.float32]:
        """Draw image ``index`` of this phantom (the same index gives the same image).

        Parameters
        ----------
        index : int
            Which image; with :attr:`seed` it seeds the drawing.
        finding : bool
            Whether to add a nodule.

        Returns
        -------
        numpy.ndarray
            float32 in [0, 1], shape ``(size, size)``.
        """
        rng = np.random.default_rng([self.seed, index])
        return draw_chest_radiograph(self.size, finding, rng, self.noise)

    def write(
        self,
        folder: Path,
        findings: Sequence[bool] = (True,),
        *,
        patient_name: str = "PHANTOM^CHEST^DX",
        patient_id: str = "PHANTOM-DX-0001",
        accession_number: str = "ACCDX0001",
        study_uid: str | None = None,
    ) -> RadiographStudy:
        """Write one Digital X-Ray image (For Presentation) per entry of ``findings``.

        Parameters
        ----------
        folder : pathlib.Path
            Where the files go; created if missing.
        findings : Sequence[bool]
            One image per value; True adds a nodule.
        patient_name : str
            Patient's Name; the tests use a sentinel here to prove it never reaches a log.
        patient_id : str
            Patient ID.
        accession_number : str
            Accession Number.
        study_uid : str or None
            Study Instance UID; a new one is generated when None.

        Returns
        -------
        RadiographStudy
            UIDs, paths and findings.

        Raises
        ------
        ValueError
            If ``findings`` is empty.
        """
        if not findings:
            raise ValueError("findings must name at least one image")
        folder.mkdir(parents=True, exist_ok=True)
        study_uid = study_uid or generate_uid()
        series_uid = generate_uid()
        now = datetime.datetime.now()
        paths: list[Path] = []
        for index, finding in enumerate(findings):
            pixels = np.rint(self.image(index, bool(finding)) * _MAX_VALUE).astype(np.uint16)
            ds = self._dataset(index, pixels, study_uid, series_uid, now)
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.AccessionNumber = accession_number
            path = folder / f"DX{index + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        return RadiographStudy(
            study_uid=study_uid,
            series_uid=series_uid,
            paths=tuple(paths),
            findings=tuple(bool(f) for f in findings),
        )

    def _dataset(
        self,
        index: int,
        pixels: npt.NDArray[np.uint16],
        study_uid: str,
        series_uid: str,
        now: datetime.datetime,
    ) -> Dataset:
        """One DX For Presentation data set (PS3.3 A.26.1), without patient identity."""
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.SeriesDate = ds.StudyDate
        ds.ContentDate = ds.StudyDate
        ds.AcquisitionDate = ds.StudyDate
        ds.StudyTime = now.strftime("%H%M%S")
        ds.SeriesTime = ds.StudyTime
        ds.ContentTime = ds.StudyTime
        ds.AcquisitionTime = ds.StudyTime
        ds.Modality = "DX"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.Manufacturer = "dicom-node phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "XR CHEST PA PHANTOM"
        ds.SeriesDescription = "CHEST PA"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
        ds.ViewPosition = "PA"
        view = _code("399348003", "SCT", "postero-anterior")
        view.ViewModifierCodeSequence = []
        ds.ViewCodeSequence = [view]
        ds.ImageLaterality = "U"
        ds.PatientOrientation = ["L", "F"]
        ds.KVP = 120
        ds.ExposureTime = 10
        ds.XRayTubeCurrent = 200
        ds.DistanceSourceToDetector = 1800.0
        ds.DistanceSourceToPatient = 1650.0
        ds.EstimatedRadiographicMagnificationFactor = round(1800.0 / 1650.0, 6)
        ds.PositionerType = "NONE"
        ds.AcquisitionContextSequence = []
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorConfiguration = "AREA"
        ds.ImagerPixelSpacing = [self.pixel_spacing_mm, self.pixel_spacing_mm]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = index + 1
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = _BITS_STORED
        ds.HighBit = _BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.WindowCenter = _MAX_VALUE // 2
        ds.WindowWidth = _MAX_VALUE
        ds.PixelData = pixels.tobytes()
        return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item
