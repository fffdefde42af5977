"""A picture of a job's result: its segmentation drawn over a few source slices.

An admin should see at a glance that a result is sane (the lungs are where the
lungs are), without a DICOM viewer. The SEG (PS3.3 A.51) is read with pydicom;
each frame is matched to its source image, and to the frame of a multi-frame
(Enhanced) source, by the Derivation Image Sequence's Referenced SOP Instance
UID and Referenced Frame Number (PS3.3 C.7.6.16.2.6) or, failing that, by
Image Position (Patient), read from the Plane Position functional group of an
Enhanced source. The chosen
slices are windowed, each segment is blended in its Recommended Display
CIELab colour (PS3.3 C.10.7.1.1) with its outline drawn solid, and a legend
names the segments. Numpy and Pillow only: the node never imports torch.

The picture holds no text from the source images, so it carries no PHI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut

from dicom_node.errors import NodeError
from pipelines.load import frame_group

__all__ = ["OverlayError", "Segment", "cielab_to_rgb", "render_overlay"]

#: Used when a segment has no Recommended Display CIELab Value.
_PALETTE = ((255, 80, 80), (80, 160, 255), (255, 200, 60), (120, 220, 120), (200, 120, 255))
_ALPHA = 0.35
_GAP = 4
_LEGEND_ROW = 16


class OverlayError(NodeError):
    """The picture cannot be drawn (no SEG, no matching source slice, unreadable file)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment of the SEG: its number, label and display colour."""

    number: int
    label: str
    rgb: tuple[int, int, int]


def cielab_to_rgb(lab: Sequence[int]) -> tuple[int, int, int]:
    """Convert a DICOM CIELab triplet (PS3.3 C.10.7.1.1) to 8-bit sRGB.

    DICOM scales L* from 0..100 and a*, b* from -128..127 to 0..65535; the
    reference white is D65.

    Parameters
    ----------
    lab : Sequence[int]
        The three unsigned 16-bit values.

    Returns
    -------
    tuple[int, int, int]
        Red, green, blue in 0..255.

    Raises
    ------
    ValueError
        If ``lab`` does not hold three values.

    Examples
    --------
    >>> cielab_to_rgb([65535, 32896, 32896])
    (255, 255, 255)
    """
    if len(lab) != 3:
        raise ValueError(f"a CIELab value has 3 components, got {len(lab)}")
    lightness = lab[0] / 65535 * 100
    a_star = lab[1] / 65535 * 255 - 128
    b_star = lab[2] / 65535 * 255 - 128
    fy = (lightness + 16) / 116
    fx = fy + a_star / 500
    fz = fy - b_star / 200

    def _inverse(t: float) -> float:
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    x, y, z = 0.95047 * _inverse(fx), 1.0 * _inverse(fy), 1.08883 * _inverse(fz)
    linear = (
        3.2406 * x - 1.5372 * y - 0.4986 * z,
        -0.9689 * x + 1.8758 * y + 0.0415 * z,
        0.0557 * x - 0.2040 * y + 1.0570 * z,
    )

    def _gamma(c: float) -> int:
        c = min(max(c, 0.0), 1.0)
        value = 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055
        return round(value * 255)

    r, g, b = (_gamma(c) for c in linear)
    return r, g, b


def _segments(seg: Dataset) -> dict[int, Segment]:
    out: dict[int, Segment] = {}
    for index, item in enumerate(seg.get("SegmentSequence", [])):
        number = int(item.SegmentNumber)
        lab = item.get("RecommendedDisplayCIELabValue")
        rgb = cielab_to_rgb([int(v) for v in lab]) if lab else _PALETTE[index % len(_PALETTE)]
        out[number] = Segment(number, str(item.get("SegmentLabel", number)), rgb)
    return out


#: A source image to draw on: its file and, for a multi-frame image, the 1-based frame.
_Slice = tuple[Path, int | None]


def _position(ds: Dataset) -> tuple[float, ...] | None:
    value = ds.get("ImagePositionPatient")
    return tuple(round(float(v), 2) for v in value) if value else None


def _frame_sources(
    seg: Dataset, index: int
) -> tuple[str | None, int | None, tuple[float, ...] | None]:
    """The SOP Instance UID, frame number and position of the source of one SEG frame."""
    groups = seg.PerFrameFunctionalGroupsSequence[index]
    uid = None
    frame = None
    for derivation in groups.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.ReferencedSOPInstanceUID)
            number = source.get("ReferencedFrameNumber")
            frame = int(number) if number is not None else None
    position = None
    planes = groups.get("PlanePositionSequence")
    if planes:
        position = _position(planes[0])
    return uid, frame, position


def _source_slices(header: Dataset, path: Path) -> list[tuple[_Slice, tuple[float, ...] | None]]:
    """Every slice a source file holds, with its position (per frame for an Enhanced image)."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return [((path, None), _position(header))]
    slices: list[tuple[_Slice, tuple[float, ...] | None]] = []
    for number in range(1, len(per_frame) + 1):
        plane = frame_group(header, number, "PlanePositionSequence")
        slices.append(((path, number), _position(plane) if plane is not None else None))
    return slices


def _frame_masks(seg: Dataset, segments: dict[int, Segment]) -> list[tuple[int, int, np.ndarray]]:
    """(frame index, segment number, boolean mask) of every frame with content."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    kind = str(seg.get("SegmentationType", "BINARY")).upper()
    out: list[tuple[int, int, np.ndarray]] = []
    for index in range(pixels.shape[0]):
        frame = pixels[index]
        if kind == "LABELMAP":
            for number in segments:
                mask = frame == number
                if mask.any():
                    out.append((index, number, mask))
            continue
        groups = seg.PerFrameFunctionalGroupsSequence[index]
        ident = groups.get("SegmentIdentificationSequence")
        if not ident:
            continue
        number = int(ident[0].ReferencedSegmentNumber)
        threshold = 0 if kind == "BINARY" else int(seg.get("MaximumFractionalValue", 255)) // 2
        mask = frame > threshold
        if mask.any():
            out.append((index, number, mask))
    return out


def _window(ds: Dataset, frame: int | None) -> npt.NDArray[np.uint8]:
    """One slice (a frame of a multi-frame image) windowed to 8 bits."""
    pixels: npt.NDArray[np.generic] = ds.pixel_array
    if frame is not None and pixels.ndim == 3:
        pixels = pixels[frame - 1]
    rescale = frame_group(ds, frame, "PixelValueTransformationSequence")
    values: npt.NDArray[np.float32]
    if rescale is not None and "RescaleSlope" in rescale:
        slope = np.float32(rescale.RescaleSlope)
        intercept = np.float32(rescale.get("RescaleIntercept", 0))
        values = pixels.astype(np.float32) * slope + intercept
    else:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    voi = frame_group(ds, frame, "FrameVOILUTSequence") or ds
    center, width = voi.get("WindowCenter"), voi.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if hasattr(center, "__len__") else center)
        width = max(float(width[0] if hasattr(width, "__len__") else width), 1.0)
        low, high = center - width / 2, center + width / 2
    else:
        low, high = (float(v) for v in np.percentile(values, (1, 99)))
        high = max(high, low + 1.0)
    scaled = (np.clip(values, low, high) - low) / (high - low) * 255
    return scaled.astype(np.uint8)


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    outline: npt.NDArray[np.bool_] = mask & ~inner
    return outline


def _draw(
    gray: np.ndarray, masks: list[tuple[int, np.ndarray]], segments: dict[int, Segment]
) -> np.ndarray:
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=2).astype(np.float32)
    for number, mask in masks:
        color = np.array(segments[number].rgb, dtype=np.float32)
        rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * color
    for number, mask in masks:
        rgb[_outline(mask)] = segments[number].rgb
    return rgb.astype(np.uint8)


def render_overlay(
    seg_path: Path, source_paths: Sequence[Path], *, slices: int = 4, tile_px: int = 256
) -> bytes:
    """Draw a SEG over a few of its source slices; return a PNG.

    Parameters
    ----------
    seg_path : pathlib.Path
        The Segmentation object.
    source_paths : Sequence[pathlib.Path]
        The job's input instances (the SEG's source images).
    slices : int
        How many slices to show, spread evenly over the segmented range.
    tile_px : int
        Largest side of each slice in the picture.

    Returns
    -------
    bytes
        A PNG: the slices side by side, a legend of the segments below.

    Raises
    ------
    ValueError
        If ``slices`` or ``tile_px`` is not positive.
    OverlayError
        If the SEG cannot be read, holds no segmented frame, or no frame
        matches a source slice.
    """
    if slices < 1 or tile_px < 16:
        raise ValueError(f"slices must be >= 1 and tile_px >= 16, got {slices} and {tile_px}")
    try:
        seg = dcmread(seg_path)
    except FileNotFoundError as exc:
        raise OverlayError("the job has no SEG on the spool") from exc
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise OverlayError(f"the SEG cannot be read ({type(exc).__name__})") from exc
    if str(seg.get("Modality", "")) != "SEG":
        raise OverlayError("the result object is not a SEG")
    segments = _segments(seg)
    frames = _frame_masks(seg, segments)
    if not frames:
        raise OverlayError("the SEG has no segmented pixel")

    by_uid: dict[tuple[str, int | None], _Slice] = {}
    by_position: dict[tuple[float, ...], _Slice] = {}
    z_of: dict[_Slice, float] = {}
    for path in source_paths:
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        for where, position in _source_slices(header, path):
            by_uid[(str(header.SOPInstanceUID), where[1])] = where
            if position is not None:
                by_position[position] = where
                z_of[where] = position[-1]
            else:
                z_of[where] = float(header.get("InstanceNumber", 0) or 0)

    masks: dict[_Slice, list[tuple[int, np.ndarray]]] = {}
    for index, number, mask in frames:
        uid, frame, position = _frame_sources(seg, index)
        source = by_uid.get((uid, frame)) if uid else None
        if source is None and position is not None:
            source = by_position.get(position)
        if source is not None and number in segments:
            masks.setdefault(source, []).append((number, mask))
    if not masks:
        raise OverlayError("no SEG frame matches a source slice of the job")

    # Show the slices where the most segments appear together (a body outline
    # alone says little about the lungs), and of those the ones where each
    # segment has at least a quarter of its own largest area, so a structure
    # is not merely grazed; spread them evenly from feet to head.
    areas: dict[_Slice, dict[int, int]] = {}
    for where, items in masks.items():
        for number, mask in items:
            areas.setdefault(where, {}).setdefault(number, 0)
            areas[where][number] += int(mask.sum())
    peak: dict[int, int] = {}
    for per_segment in areas.values():
        for number, area in per_segment.items():
            peak[number] = max(peak.get(number, 0), area)
    most = max(len(per_segment) for per_segment in areas.values())
    candidates = [where for where in masks if len(areas[where]) == most]
    full = [p for p in candidates if all(a * 4 >= peak[n] for n, a in areas[p].items())]
    ordered = sorted(full or candidates, key=lambda p: z_of.get(p, 0.0))
    spots = np.linspace(0, len(ordered) - 1, min(slices, len(ordered)))
    picks = list(dict.fromkeys(ordered[round(i)] for i in spots))
    tiles = []
    read: dict[Path, Dataset] = {}
    for where in picks:
        path, frame = where
        if path not in read:
            read[path] = dcmread(path)
        gray = _window(read[path], frame)
        usable = [(n, m) for n, m in masks[where] if m.shape == gray.shape]
        image = Image.fromarray(_draw(gray, usable, segments))
        image.thumbnail((tile_px, tile_px), Image.Resampling.LANCZOS)
        tiles.append(image)

    shown = sorted({n for where in picks for n, _ in masks[where]})
    width = sum(t.width for t in tiles) + _GAP * (len(tiles) + 1)
    height = max(t.height for t in tiles) + 2 * _GAP + _LEGEND_ROW * max(len(shown), 1) + _GAP
    canvas = Image.new("RGB", (width, height), (20, 20, 20))
    x = _GAP
    for tile in tiles:
        canvas.paste(tile, (x, _GAP))
        x += tile.width + _GAP
    draw = ImageDraw.Draw(canvas)
    y = max(t.height for t in tiles) + 2 * _GAP
    for number in shown:
        segment = segments[number]
        draw.rectangle((_GAP, y + 2, _GAP + 10, y + 12), fill=segment.rgb)
        draw.text((_GAP + 16, y), f"{segment.number}: {segment.label}", fill=(230, 230, 230))
        y += _LEGEND_ROW
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False)
    return out.getvalue()
