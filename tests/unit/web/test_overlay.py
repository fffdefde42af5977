"""The job's picture: a real SEG drawn over real source slices, checked pixel by pixel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage

from dicom_node.phantom import PhantomLabel
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.web.overlay import OverlayError, cielab_to_rgb, render_overlay
from tests.unit.web.conftest import SMALL, SeededJob


def _tiles(png: bytes, count: int, size: int) -> list[np.ndarray]:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    gap = 4
    tiles = []
    for i in range(count):
        left = gap + i * (size + gap)
        tiles.append(image[gap : gap + size, left : left + size])
    return tiles


def test_lungs_are_coloured_where_the_seg_says(
    done_job: SeededJob, spool: Spool, state: StateDB
) -> None:
    job = state.job(done_job.job_id)
    assert job is not None
    sources = [spool.resolve(p) for p in job.inputs]
    png = render_overlay(spool.job_dir(done_job.job_id) / "seg.dcm", sources, slices=3, tile_px=64)

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width == 3 * 64 + 4 * 4  # three tiles and their gaps
    labels = SMALL.labels()
    lungs = np.isin(labels, [PhantomLabel.RIGHT_LUNG, PhantomLabel.LEFT_LUNG]).sum(axis=(1, 2))
    # Slices with at least a quarter of the largest lung area, first, middle, last.
    shown = [k for k in range(SMALL.slices) if lungs[k] * 4 >= lungs.max()]
    chosen = [shown[0], shown[round((len(shown) - 1) / 2)], shown[-1]]
    seg = pydicom.dcmread(spool.job_dir(done_job.job_id) / "seg.dcm")
    right_colour = np.array(cielab_to_rgb(seg.SegmentSequence[0].RecommendedDisplayCIELabValue))
    for tile, k in zip(_tiles(png, 3, 64), chosen, strict=True):
        # The interior (the outline is drawn solid anyway) carries the blended fill.
        right = ndimage.binary_erosion(labels[k] == PhantomLabel.RIGHT_LUNG)
        assert right.sum() > 10
        inside = tile[right].astype(float)
        outside = tile[(labels[k] == PhantomLabel.BODY)].astype(float)
        # Inside the right lung the pixels lean to its colour; the body stays grey.
        spread_inside = np.abs(inside - inside.mean(axis=1, keepdims=True)).mean()
        spread_outside = np.abs(outside - outside.mean(axis=1, keepdims=True)).mean()
        assert spread_outside < 1.0
        assert spread_inside > 10.0
        dominant = int(np.argmax(right_colour))
        assert inside.mean(axis=0)[dominant] == inside.mean(axis=0).max()


def test_cielab_white_and_a_blue() -> None:
    assert cielab_to_rgb([65535, 32896, 32896]) == (255, 255, 255)
    r, g, b = cielab_to_rgb([int(60 / 100 * 65535), int(88 / 255 * 65535), int(88 / 255 * 65535)])
    assert b > max(r, g)


def test_no_seg_is_a_clear_error(
    tmp_path: Path, done_job: SeededJob, spool: Spool, state: StateDB
) -> None:
    job = state.job(done_job.job_id)
    assert job is not None
    with pytest.raises(OverlayError, match="no SEG"):
        render_overlay(tmp_path / "missing.dcm", [spool.resolve(p) for p in job.inputs])
    with pytest.raises(OverlayError, match="not a SEG"):
        render_overlay(spool.resolve(job.inputs[0]), [spool.resolve(p) for p in job.inputs])


def test_seg_without_its_sources_is_a_clear_error(done_job: SeededJob, spool: Spool) -> None:
    with pytest.raises(OverlayError, match="no SEG frame matches"):
        render_overlay(spool.job_dir(done_job.job_id) / "seg.dcm", [])


def test_overlay_over_http(
    admin: tuple[TestClient, str], done_job: SeededJob, failed_job: SeededJob
) -> None:
    browser, _ = admin
    answer = browser.get(f"/api/jobs/{done_job.job_id}/overlay.png")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(answer.content)).size[0] > 64
    missing = browser.get(f"/api/jobs/{failed_job.job_id}/overlay.png")
    assert missing.status_code == 404
    assert "no SEG" in missing.json()["detail"]
    page = browser.get(f"/jobs/{done_job.job_id}").text
    assert f'src="/api/jobs/{done_job.job_id}/overlay.png"' in page
    assert "overlay.png" not in browser.get(f"/jobs/{failed_job.job_id}").text
