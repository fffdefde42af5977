"""A synthetic chest CT phantom with known structure volumes.

The demo and the tests need a realistic CT study without real patient data and
without downloads. The phantom is an elliptic body cylinder (fat ring, soft
tissue), two ellipsoidal lungs, a trachea that divides at the carina into two
main bronchi running into the lungs, a heart that indents the left lung, a
spine and a patient table separated from the body by an air gap. Voxels are
labelled first, so the true volume of every structure is an exact voxel count;
the HU image is then drawn from the labels, blurred in-plane (partial volume at
edges) and given Gaussian noise.

The anatomy is a function of patient coordinates (:meth:`ChestPhantom.labels_at`),
so the same chest can be sampled on any planes: axial slices (the default), or
the sheared, unevenly spaced planes of a tilted gantry
(:meth:`ChestPhantom.tilted_planes`), as a real head CT is sent.

Geometry is in the DICOM patient coordinate system (LPS, PS3.3 C.7.6.2.1.1):
+x is the patient's left, +y posterior, +z head. Slices are written feet to head.

Only numpy, scipy and pydicom are used: ``dicom_node`` never imports torch.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

__all__ = ["ChestPhantom", "PhantomLabel", "PhantomStudy", "SlicePlane"]


class PhantomLabel:
    """Integer labels of the phantom's structures (0 is air)."""

    AIR = 0
    BODY = 1
    FAT = 2
    RIGHT_LUNG = 3
    LEFT_LUNG = 4
    HEART = 5
    SPINE = 6
    TABLE = 7
    #: Trachea and the main bronchi outside the lungs (air).
    AIRWAY = 8


_HU = {
    PhantomLabel.AIR: -1000.0,
    PhantomLabel.BODY: 40.0,
    PhantomLabel.FAT: -100.0,
    PhantomLabel.RIGHT_LUNG: -850.0,
    PhantomLabel.LEFT_LUNG: -850.0,
    PhantomLabel.HEART: 45.0,
    PhantomLabel.SPINE: 700.0,
    PhantomLabel.TABLE: 200.0,
    PhantomLabel.AIRWAY: -1000.0,
}

# What a body segmentation must include: everything inside the skin.
_INSIDE_BODY = (
    PhantomLabel.BODY,
    PhantomLabel.FAT,
    PhantomLabel.RIGHT_LUNG,
    PhantomLabel.LEFT_LUNG,
    PhantomLabel.HEART,
    PhantomLabel.SPINE,
    PhantomLabel.AIRWAY,
)


@dataclass(frozen=True, slots=True)
class SlicePlane:
    """Where one slice lies in the patient.

    Attributes
    ----------
    position : tuple[float, float, float]
        Image Position (Patient) of the first pixel, LPS mm.
    orientation : tuple[float, float, float, float, float, float]
        Image Orientation (Patient): row, then column direction cosines.
    thickness_mm : float
        Slice Thickness written into the header.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    thickness_mm: float


@dataclass(frozen=True, slots=True)
class PhantomStudy:
    """A phantom study written to disk.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    series_uid : str
        Series Instance UID of the CT series.
    frame_of_reference_uid : str
        Frame of Reference UID shared by all slices.
    paths : tuple[pathlib.Path, ...]
        The written files, feet to head.
    true_volumes_ml : dict[str, float]
        Exact volume of ``body``, ``right_lung`` and ``left_lung`` in mL.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    paths: tuple[Path, ...]
    true_volumes_ml: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChestPhantom:
    """Parameters of a synthetic chest CT.

    Parameters
    ----------
    slices : int
        Number of axial slices.
    size : int
        Rows and columns of each slice.
    pixel_spacing_mm : float
        In-plane spacing; the field of view is ``size * pixel_spacing_mm``.
    slice_thickness_mm : float
        Spacing between slice centres (and the slice thickness).
    noise_hu : float
        Standard deviation of the added Gaussian noise in HU.
    seed : int
        Seed of the noise, so a phantom is reproducible.
    """

    slices: int = 120
    size: int = 512
    pixel_spacing_mm: float = 0.7
    slice_thickness_mm: float = 2.5
    noise_hu: float = 15.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slices < 8:
            raise ValueError(f"slices must be at least 8, got {self.slices}")
        if self.size < 64:
            raise ValueError(f"size must be at least 64, got {self.size}")
        if self.pixel_spacing_mm <= 0 or self.slice_thickness_mm <= 0:
            raise ValueError("pixel_spacing_mm and slice_thickness_mm must be positive")

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return self.pixel_spacing_mm**2 * self.slice_thickness_mm / 1000.0

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """Image Position (Patient) of the first pixel of the first slice."""
        half_fov = self.size * self.pixel_spacing_mm / 2.0
        first = -half_fov + self.pixel_spacing_mm / 2.0
        z0 = -(self.slices - 1) * self.slice_thickness_mm / 2.0
        return (first, first, z0)

    def labels(self) -> np.ndarray:
        """Return the label volume, shape ``(slices, size, size)``, as uint8.

        Returns
        -------
        numpy.ndarray
            One :class:`PhantomLabel` value per voxel, indexed ``[slice, row, column]``.
        """
        ox, oy, oz = self.origin_mm
        coords = np.arange(self.size, dtype=np.float32) * self.pixel_spacing_mm
        x = (ox + coords)[np.newaxis, :]  # columns run along +x
        y = (oy + coords)[:, np.newaxis]  # rows run along +y
        out = np.zeros((self.slices, self.size, self.size), dtype=np.uint8)
        for k in range(self.slices):
            out[k] = self.labels_at(x, y, np.float32(oz + k * self.slice_thickness_mm))
        return out

    def labels_at(self, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike) -> np.ndarray:
        """Label points of the patient: the anatomy as a function of LPS coordinates.

        Parameters
        ----------
        x, y, z : numpy.typing.ArrayLike
            Coordinates in mm, broadcastable to one shape.

        Returns
        -------
        numpy.ndarray
            uint8 :class:`PhantomLabel` values, of the broadcast shape.
        """
        x, y, z = np.broadcast_arrays(
            np.asarray(x, dtype=np.float32),
            np.asarray(y, dtype=np.float32),
            np.asarray(z, dtype=np.float32),
        )
        # Scale the anatomy with the field of view so small test phantoms stay sane.
        s = self.size * self.pixel_spacing_mm / 358.4
        z_half = (self.slices - 1) * self.slice_thickness_mm / 2.0
        out = np.zeros(x.shape, dtype=np.uint8)
        outer = (x / (165 * s)) ** 2 + (y / (115 * s)) ** 2 <= 1.0
        inner = (x / (152 * s)) ** 2 + (y / (103 * s)) ** 2 <= 1.0
        out[outer] = PhantomLabel.FAT
        out[inner] = PhantomLabel.BODY
        # Trachea down the midline, behind the heart and in front of the spine, from
        # the top of the scan to the carina; there it divides into the main bronchi,
        # which run down and out into the lungs (inside a lung, airway counts as lung).
        carina = np.array([0.0, 40.0 * s, 0.3 * z_half], dtype=np.float32)
        trachea = (x**2 + (y - carina[1]) ** 2 <= (9.0 * s) ** 2) & (z >= carina[2])
        out[trachea] = PhantomLabel.AIRWAY
        for side in (-1.0, 1.0):
            end = np.array([side * 40.0 * s, 20.0 * s, 0.1 * z_half], dtype=np.float32)
            out[_within_segment(x, y, z, carina, end, 6.0 * s)] = PhantomLabel.AIRWAY
        lung_z = 0.75 * z_half
        for cx, label in ((-75.0, PhantomLabel.RIGHT_LUNG), (75.0, PhantomLabel.LEFT_LUNG)):
            lung = ((x - cx * s) / (55 * s)) ** 2 + ((y + 5 * s) / (75 * s)) ** 2 + (
                z / lung_z
            ) ** 2 <= 1.0
            out[lung] = label
        heart_zc = -0.2 * z_half
        heart = ((x - 15 * s) / (50 * s)) ** 2 + ((y + 30 * s) / (45 * s)) ** 2 + (
            (z - heart_zc) / (0.35 * z_half)
        ) ** 2 <= 1.0
        out[heart] = PhantomLabel.HEART
        spine = (x / (15 * s)) ** 2 + ((y - 85 * s) / (15 * s)) ** 2 <= 1.0
        out[spine] = PhantomLabel.SPINE
        table = (np.abs(x) <= 170 * s) & (y >= 123 * s) & (y <= 131 * s)
        out[table & ~outer] = PhantomLabel.TABLE
        return out

    def plane_labels(self, plane: SlicePlane) -> np.ndarray:
        """Label every pixel of one slice plane, shape ``(size, size)``.

        Parameters
        ----------
        plane : SlicePlane
            Where the slice lies.

        Returns
        -------
        numpy.ndarray
            uint8 :class:`PhantomLabel` values, indexed ``[row, column]``.
        """
        row = np.asarray(plane.orientation[:3], dtype=np.float64)
        column = np.asarray(plane.orientation[3:], dtype=np.float64)
        steps = np.arange(self.size, dtype=np.float64) * self.pixel_spacing_mm
        points = (
            np.asarray(plane.position, dtype=np.float64)
            + steps[:, np.newaxis, np.newaxis] * column  # down the rows
            + steps[np.newaxis, :, np.newaxis] * row  # along a row
        )
        return self.labels_at(points[..., 0], points[..., 1], points[..., 2])

    def tilted_planes(self, tilt_deg: float, steps_mm: Sequence[float]) -> tuple[SlicePlane, ...]:
        """The planes of a tilted gantry: rows along x, columns tilted about x.

        As a scanner writes them: every slice is centred on the table's axis and
        the positions step along the table (z) only, so the stack is sheared by
        the tilt.

        Parameters
        ----------
        tilt_deg : float
            Gantry/Detector Tilt (degrees; 0 gives axial slices).
        steps_mm : Sequence[float]
            Table travel from each slice to the next (one fewer than the slices);
            runs of different steps make an unevenly spaced series.

        Returns
        -------
        tuple[SlicePlane, ...]
            Feet to head, centred on z = 0.
        """
        angle = math.radians(tilt_deg)
        row = (1.0, 0.0, 0.0)
        column = (0.0, math.cos(angle), math.sin(angle))
        z = np.concatenate([[0.0], np.cumsum(np.asarray(steps_mm, dtype=np.float64))])
        z -= (z[0] + z[-1]) / 2.0
        half = (self.size - 1) * self.pixel_spacing_mm / 2.0
        thickness = [*steps_mm, steps_mm[-1]] if len(steps_mm) else [self.slice_thickness_mm]
        planes = []
        for k, z_k in enumerate(z):
            corner = np.array([0.0, 0.0, z_k]) - half * np.asarray(row) - half * np.asarray(column)
            planes.append(
                SlicePlane(
                    position=(float(corner[0]), float(corner[1]), float(corner[2])),
                    orientation=(*row, *column),
                    thickness_mm=float(thickness[k]),
                )
            )
        return tuple(planes)

    def true_volumes_ml(self, labels: np.ndarray) -> dict[str, float]:
        """Exact volumes of the structures a body/lung segmentation should find.

        Parameters
        ----------
        labels : numpy.ndarray
            The output of :meth:`labels`.

        Returns
        -------
        dict[str, float]
            ``body``, ``right_lung`` and ``left_lung`` in mL.
        """
        v = self.voxel_volume_ml
        return {
            "body": float(np.isin(labels, _INSIDE_BODY).sum() * v),
            "right_lung": float((labels == PhantomLabel.RIGHT_LUNG).sum() * v),
            "left_lung": float((labels == PhantomLabel.LEFT_LUNG).sum() * v),
        }

    def hounsfield(self, labels: np.ndarray) -> np.ndarray:
        """Draw the HU image from the labels: blur in-plane, add noise.

        Parameters
        ----------
        labels : numpy.ndarray
            The output of :meth:`labels`.

        Returns
        -------
        numpy.ndarray
            float32 HU values, same shape as ``labels``.
        """
        lut = np.full(256, -1000.0, dtype=np.float32)
        for label, hu in _HU.items():
            lut[label] = hu
        hu_image = lut[labels]
        # Partial volume: edges are a mix of both sides, as a real scanner sees them.
        hu_image = ndimage.gaussian_filter(hu_image, sigma=(0.0, 0.7, 0.7))
        rng = np.random.default_rng(self.seed)
        hu_image += rng.normal(0.0, self.noise_hu, size=hu_image.shape).astype(np.float32)
        return np.asarray(hu_image, dtype=np.float32)

    def write(
        self,
        folder: Path,
        *,
        patient_name: str = "PHANTOM^CHEST",
        patient_id: str = "PHANTOM-0001",
        accession_number: str = "ACC0001",
        study_uid: str | None = None,
        planes: Sequence[SlicePlane] | None = None,
    ) -> PhantomStudy:
        """Write the phantom as a CT series, one file per slice.

        Parameters
        ----------
        folder : pathlib.Path
            Where the files go; created if missing.
        patient_name : str
            Patient's Name; the tests use a sentinel here to prove it never reaches a log.
        patient_id : str
            Patient ID.
        accession_number : str
            Accession Number.
        study_uid : str or None
            Study Instance UID; a new one is generated when None.
        planes : Sequence[SlicePlane] or None
            Where the slices lie (e.g. :meth:`tilted_planes`); None gives the
            axial slices of :meth:`labels`. True volumes are counted on the
            axial voxels either way.

        Returns
        -------
        PhantomStudy
            UIDs, paths and true volumes.
        """
        folder.mkdir(parents=True, exist_ok=True)
        labels = self.labels()
        true_volumes = self.true_volumes_ml(labels)
        ox, oy, oz = self.origin_mm
        if planes is None:
            planes = [
                SlicePlane(
                    position=(
                        round(ox, 4),
                        round(oy, 4),
                        round(oz + k * self.slice_thickness_mm, 4),
                    ),
                    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                    thickness_mm=self.slice_thickness_mm,
                )
                for k in range(self.slices)
            ]
        else:
            labels = np.stack([self.plane_labels(plane) for plane in planes])
        hu_image = self.hounsfield(labels)
        intercept = -1024.0
        stored = np.clip(np.rint(hu_image - intercept), 0, 4095).astype(np.uint16)

        study_uid = study_uid or generate_uid()
        series_uid = generate_uid()
        for_uid = generate_uid()
        now = datetime.datetime.now()
        paths: list[Path] = []
        for k, plane in enumerate(planes):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = now.strftime("%Y%m%d")
            ds.SeriesDate = ds.StudyDate
            ds.ContentDate = ds.StudyDate
            ds.StudyTime = now.strftime("%H%M%S")
            ds.SeriesTime = ds.StudyTime
            ds.ContentTime = ds.StudyTime
            ds.AccessionNumber = accession_number
            ds.Modality = "CT"
            ds.Manufacturer = "dicom-node phantom"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "CT CHEST PHANTOM"
            ds.SeriesDescription = "CHEST 2.5mm"
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.BodyPartExamined = "CHEST"
            ds.SliceThickness = round(plane.thickness_mm, 4)
            ds.KVP = 120
            ds.PatientPosition = "FFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = 2
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            # DS holds at most 16 characters: round, or 0.7 * 256 prints 17 digits.
            ds.ImagePositionPatient = [round(v, 4) for v in plane.position]
            ds.ImageOrientationPatient = [round(v, 6) for v in plane.orientation]
            tilt = math.degrees(math.atan2(plane.orientation[5], plane.orientation[4]))
            if abs(tilt) > 1e-6:
                ds.GantryDetectorTilt = round(tilt, 4)
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = round(plane.position[2], 4)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = self.size
            ds.Columns = self.size
            ds.PixelSpacing = [self.pixel_spacing_mm, self.pixel_spacing_mm]
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = intercept
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter = -600
            ds.WindowWidth = 1500
            ds.PixelData = stored[k].tobytes()
            path = folder / f"CT{k + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        return PhantomStudy(
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=for_uid,
            paths=tuple(paths),
            true_volumes_ml=true_volumes,
        )


def _within_segment(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float
) -> np.ndarray:
    """Points within ``radius`` of the segment from ``start`` to ``end`` (a capsule)."""
    axis = end - start
    length2 = float(axis @ axis)
    t = ((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dx = x - (start[0] + t * axis[0])
    dy = y - (start[1] + t * axis[1])
    dz = z - (start[2] + t * axis[2])
    inside: np.ndarray = dx**2 + dy**2 + dz**2 <= radius**2
    return inside
