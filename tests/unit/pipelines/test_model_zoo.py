"""Every bundle of ``shared/model-zoo``, as downloaded, through ``run_pipeline``.

Random weights come from each bundle's own ``network_def`` (``tests/model_zoo.py``);
the series are real ones from ``shared/corpus`` or the phantoms. Each test checks
that the objects are valid (dciodvfy, 0 errors) and lie on the source grid; the
stand-in networks (a 1x1x1 convolution with a known threshold, put in through
``model.overrides``) show that the bundle's own preprocessing and its inverse ran:
the SEG matches the threshold of the source within one voxel.

The torchvision layers of ``lung_nodule_ct_detection`` and
``breast_density_classification`` are replaced, in the test only, by the pure-torch
equivalents of ``torchvision_standin.py``: torchvision cannot be installed beside
the pinned CPU torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from scipy import ndimage

from dicom_node.phantom import PhantomStudy
from dicom_node.phantom_dx import ChestRadiographPhantom
from pipelines import models
from pipelines.bundle import load_bundle
from pipelines.bundle_memory import MemoryPlan, RunShape, estimate_mb
from pipelines.errors import PipelineConfigError, PipelineError
from pipelines.load import load_series
from pipelines.manifest import ManifestStatus
from pipelines.run import run_pipeline
from pipelines.spec import load_pipeline_specs
from pipelines.volume import Volume, to_volume
from tests.judges import dciodvfy_errors
from tests.model_zoo import corpus, make_weights, pipeline_spec, threshold_network, zoo_bundle
from tests.unit.pipelines import torchvision_standin


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    models.clear_model_cache()


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def _seg_labels(seg_path: Path, volume: Volume) -> npt.NDArray[np.int16]:
    """The SEG back on the volume's grid, by its per-frame source references and positions."""
    seg = pydicom.dcmread(seg_path)
    by_uid = {str(ds.SOPInstanceUID): i for i, ds in enumerate(volume.datasets)}
    out = np.zeros(volume.shape, dtype=np.int16)
    frames = seg.pixel_array.reshape(-1, *volume.shape[1:])
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared_iop = shared.PlaneOrientationSequence[0]
    source_iop = np.asarray(volume.datasets[0].ImageOrientationPatient, dtype=float)
    assert np.allclose(np.asarray(shared_iop.ImageOrientationPatient, dtype=float), source_iop)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        index = by_uid[uid]
        position = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        source = np.asarray(volume.datasets[index].ImagePositionPatient, dtype=float)
        assert np.allclose(position, source, atol=1e-3), "a SEG frame is off its source plane"
        ident = group if "SegmentIdentificationSequence" in group else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if str(seg.SegmentationType) == "LABELMAP":
            out[index] = frame
        else:
            out[index][frame.astype(bool)] = number
    return out


def _within_one_voxel(
    found: npt.NDArray[np.bool_],
    expected: npt.NDArray[np.bool_],
    band: tuple[int, int, int] = (1, 1, 1),
) -> float:
    """Fraction of disagreeing voxels, after checking the masks are aligned within one voxel.

    ``band`` is one voxel of the grid the bundle resampled to, in source voxels
    (slice, row, column). The centres of mass agree within it on every axis (a
    mirrored or transposed result is off by many), and every disagreeing voxel lies
    within it of an edge of ``expected`` (what resampling there and back blurs).
    """
    shift = np.array(ndimage.center_of_mass(found)) - np.array(ndimage.center_of_mass(expected))
    assert np.all(np.abs(shift) <= np.array(band)), f"centres of mass differ by {shift} voxels"
    structure = np.ones([2 * b + 1 for b in band], dtype=bool)
    edge = ndimage.binary_dilation(expected, structure) & ~ndimage.binary_erosion(
        expected, structure
    )
    wrong = found != expected
    assert not np.any(wrong & ~edge), f"{int(np.sum(wrong & ~edge))} voxels off by more than one"
    return float(np.mean(wrong))


def _judge(folder: Path, *names: str) -> None:
    for name in names:
        assert dciodvfy_errors(folder / name) == [], name


def test_spleen_runs_unedited_on_a_real_ct(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = zoo_bundle("spleen_ct_segmentation", tmp_path_factory)
    spec = load_pipeline_specs(pipeline_spec(tmp_path / "p", bundle))["zoo-test"]
    paths = corpus("lidc-idri-0001-chest-ct")
    manifest = run_pipeline(spec, paths, tmp_path / "out", job_id=1)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "seg.dcm", "sr.dcm")
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    # The label's codes came from the TotalSegmentator table, not from the YAML.
    item = seg.SegmentSequence[0]
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # Spleen
    volume = to_volume(load_series(paths))
    labels = _seg_labels(tmp_path / "out" / "seg.dcm", volume)
    assert labels.any()


def test_spleen_preprocessing_and_inverse_keep_a_known_mask_in_place(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = _copy(zoo_bundle("spleen_ct_segmentation", tmp_path_factory), tmp_path)
    # After ScaleIntensityRanged(-57..164 -> 0..1), 0.5 is 53.5 HU.
    definition, write = threshold_network(0.5)
    write(bundle)
    folder = pipeline_spec(
        tmp_path / "p",
        bundle,
        model={"kind": "bundle", "path": str(bundle), "weights": "models/standin.pt",
               "overrides": {"network_def": definition}},
    )  # fmt: skip
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = corpus("lidc-idri-0001-chest-ct")
    run_pipeline(spec, paths, tmp_path / "out", job_id=2)
    volume = to_volume(load_series(paths))
    found = _seg_labels(tmp_path / "out" / "seg.dcm", volume) == 1
    expected = volume.array > 53.5
    # Resampled to 1.5 x 1.5 x 2 mm (one voxel: 3 source pixels in-plane, 1 slice) and back.
    assert _within_one_voxel(found, expected, band=(1, 3, 3)) < 0.05
    # At the source's own spacing, Orientationd and Spacingd there and back are exact: the
    # SEG is the threshold voxel for voxel (what resampling shifts above is MONAI's own).
    spacing = [0.703125, 0.703125, 2.5]
    folder = pipeline_spec(
        tmp_path / "p2", bundle, model={"kind": "bundle", "path": str(bundle),
        "weights": "models/standin.pt", "overrides": {
            "network_def": definition, "preprocessing#transforms#3#pixdim": spacing}},
    )  # fmt: skip
    models.clear_model_cache()
    run_pipeline(load_pipeline_specs(folder)["zoo-test"], paths, tmp_path / "out2", job_id=3)
    exact = _seg_labels(tmp_path / "out2" / "seg.dcm", volume) == 1
    assert np.array_equal(exact, expected)


@pytest.mark.slow
def test_wholebody_runs_its_real_config_with_table_codes_and_absent_labels(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = _copy(zoo_bundle("wholeBody_ct_segmentation", tmp_path_factory), tmp_path)
    # highres: false makes the bundle load models/model_lowres.pt; a model.pt that does
    # not fit would fail the job if the loader ignored the bundle's own choice.
    (bundle / "models" / "model.pt").rename(bundle / "models" / "model_lowres.pt")
    (bundle / "models" / "model.pt").write_bytes(b"not the weights of this run")
    folder = pipeline_spec(
        tmp_path / "p", bundle,
        model={"kind": "bundle", "path": str(bundle), "overrides": {"highres": False}},
    )  # fmt: skip
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = corpus("lidc-idri-0002-chest-ct")
    manifest = run_pipeline(spec, paths, tmp_path / "out", job_id=3)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "seg.dcm", "sr.dcm")
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    present = len(seg.SegmentSequence)
    assert present >= 1
    # Every one of the 104 labels is accounted for: a segment, or "absent" in the SR.
    absent = _absent_findings(sr)
    assert present + len(absent) == 104
    assert any("reported absent" in note for note in manifest.notes) == bool(absent)
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    volume = to_volume(load_series(paths))
    labels = _seg_labels(tmp_path / "out" / "seg.dcm", volume)
    assert labels.max() <= present


def _absent_findings(sr: pydicom.Dataset) -> list[str]:
    """Finding types of the groups whose qualitative evaluation is Absent (121054)."""
    absent: list[str] = []
    container = next(i for i in sr.ContentSequence if i.ValueType == "CONTAINER" and
                     i.ConceptNameCodeSequence[0].CodeValue == "126010")  # fmt: skip
    for group in container.ContentSequence:
        codes = [
            i.ConceptCodeSequence[0].CodeValue
            for i in group.ContentSequence
            if i.ValueType == "CODE"
        ]
        if "121054" in codes:
            finding = next(
                i.ConceptCodeSequence[0].CodeMeaning
                for i in group.ContentSequence
                if i.ConceptNameCodeSequence[0].CodeValue == "121071"
            )
            absent.append(str(finding))
    return absent


@pytest.mark.slow
def test_memory_plan_by_parts_equals_the_bundle_postprocessing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bundle = zoo_bundle("wholeBody_ct_segmentation", tmp_path_factory)
    volume = to_volume(load_series(corpus("lidc-idri-0002-chest-ct")))
    # Smaller windows keep the test quick; the plan's parts are the same.
    overrides = {"highres": False, "modelname": "model.pt", "roi_size": [64, 64, 32]}
    loaded = load_bundle(bundle, overrides=overrides)
    as_is = loaded.run(volume.to_metatensor())
    # Half-precision stitching and the postprocessing by parts (softmax, argmax, Invertd).
    lean = loaded.run(volume.to_metatensor(), MemoryPlan(half_stitching=True, by_parts=True))
    assert as_is.pred is not None
    assert lean.pred is not None
    agree = np.mean(as_is.pred.numpy() == lean.pred.numpy())
    assert agree > 0.995  # float16 stitching may flip near-ties only
    # A budget below what the worker already holds: refused before the network runs.
    with pytest.raises(PipelineError, match="memory budget of 300 MiB"):
        load_bundle(bundle, overrides=overrides, memory_budget_mb=300).run(volume.to_metatensor())


def test_memory_estimate_orders_the_plans_for_a_300_slice_ct() -> None:
    # wholeBody at 1.5 mm over 512x512x300 at 0.7 x 0.7 x 2.5 mm: 105 channels.
    shape = RunShape(channels=105, original=512 * 512 * 300, preprocessed=240 * 240 * 500,
                     roi_voxels=96**3, sw_batch_size=1, invert_before_argmax=False)  # fmt: skip
    full = estimate_mb(shape, half=False, by_parts=False)
    half = estimate_mb(shape, half=True, by_parts=False)
    parts = estimate_mb(shape, half=False, by_parts=True)
    lean = estimate_mb(shape, half=True, by_parts=True)
    assert full > half > lean
    assert full > parts > lean
    # As configured it needs two float32 copies of 105 x 28.8 M values (over 20 GiB).
    assert full > 2 * 105 * 28.8e6 * 4 / 2**20
    assert lean < full / 3


@pytest.mark.slow
def test_brain_bundle_runs_on_an_oblique_mr_and_its_seg_sits_on_the_source_planes(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = zoo_bundle("wholeBrainSeg_Large_UNEST_segmentation", tmp_path_factory)
    # The network and its 133 channels run in full; the SEG keeps the structures coded
    # from PS3.16 (dciodvfy takes minutes over a SEG of 132 segments x 40 frames).
    folder = pipeline_spec(tmp_path / "p", bundle, labels=_coded_brain_labels(),
                           bundle_labels="listed")  # fmt: skip
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = corpus("toshiba-mr-dwi-oblique-b0-volume")
    manifest = run_pipeline(spec, paths, tmp_path / "out", job_id=4)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "seg.dcm", "sr.dcm")
    volume = to_volume(load_series(paths))
    labels = _seg_labels(tmp_path / "out" / "seg.dcm", volume)  # asserts planes and orientation
    assert labels.any()
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    modifiers = {
        item.SegmentedPropertyTypeCodeSequence[0]
        .SegmentedPropertyTypeModifierCodeSequence[0]
        .CodeMeaning
        for item in seg.SegmentSequence
        if "SegmentedPropertyTypeModifierCodeSequence" in item.SegmentedPropertyTypeCodeSequence[0]
    }
    assert modifiers <= {"Left", "Right"}


def _coded_brain_labels() -> list[dict[str, object]]:
    from pipelines.label_table import lookup

    labels = []
    for name in (
        "Left-Hippocampus",
        "Right-Hippocampus",
        "Left-Lateral-Ventricle",
        "Right-Lateral-Ventricle",
        "Left-Cerebral-White-Matter",
        "Brain-Stem",
    ):
        found = lookup(name)
        assert found is not None, name
        labels.append(found[0].model_dump(mode="json", exclude_none=True))
    return labels


def test_brain_bundle_preprocessing_keeps_a_known_mask_on_a_sagittal_t1(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = _copy(zoo_bundle("wholeBrainSeg_Large_UNEST_segmentation", tmp_path_factory),
                   tmp_path)  # fmt: skip
    # NormalizeIntensityd(nonzero): 0 is the mean of the non-zero voxels.
    definition, write = threshold_network(0.0)
    write(bundle)
    labels = [{"name": "3rd-Ventricle", "label": "Above mean",
               "category": {"value": "85756007", "meaning": "Tissue"},
               "type": {"value": "5366008", "meaning": "Hippocampus"}}]  # fmt: skip
    folder = pipeline_spec(
        tmp_path / "p", bundle, labels=labels,
        model={"kind": "bundle", "path": str(bundle), "weights": "models/standin.pt",
               "overrides": {"network_def": definition, "roi_size": [64, 64, 32]}},
    )  # fmt: skip
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = corpus("mr-sag-t1-decubitus-hfdl")
    run_pipeline(spec, paths, tmp_path / "out", job_id=5)
    volume = to_volume(load_series(paths))
    found = _seg_labels(tmp_path / "out" / "seg.dcm", volume) == 1
    nonzero = volume.array[volume.array != 0]
    # Channel 1 of the stand-in is channel 1 of the bundle, "3rd-Ventricle".
    expected = volume.array > nonzero.mean()
    assert _within_one_voxel(found, expected) < 0.01


@pytest.mark.slow
def test_lung_nodule_detector_runs_unedited(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    small_study: PhantomStudy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torchvision_standin.install(monkeypatch)
    bundle = zoo_bundle("lung_nodule_ct_detection", tmp_path_factory)
    labels = [{"value": 0, "name": "nodule", "label": "Lung nodule",
               "category": {"value": "49755003", "meaning": "Morphologically Abnormal Structure"},
               "type": {"value": "27925004", "meaning": "Nodule"}}]  # fmt: skip
    folder = pipeline_spec(
        tmp_path / "p", bundle, task="detection", outputs=["sr"], labels=labels,
        detection={"score_threshold": 0.0, "max_findings": 3},
    )  # fmt: skip
    spec = load_pipeline_specs(folder)["zoo-test"]
    manifest = run_pipeline(spec, small_study.paths, tmp_path / "out", job_id=6)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "sr.dcm")
    # Random weights still give boxes above a zero threshold; each lands on the volume.
    assert manifest.measurements["nodule.count"] == 3


def test_missing_torchvision_is_named(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = zoo_bundle("breast_density_classification", tmp_path_factory)
    import sys

    import monai.networks.nets.torchvision_fc as fc
    from monai.utils.module import optional_import

    # An environment without torchvision, whatever this one has.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setattr(fc, "models", optional_import("torchvision.models")[0])
    with pytest.raises(PipelineConfigError, match="needs the package torchvision, not installed"):
        load_bundle(bundle)


def _mammograms(folder: Path) -> list[Path]:
    study = ChestRadiographPhantom(size=128).write(folder, findings=(True, False))
    paths = list(study.paths)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.Modality = "MG"
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_breast_density_classifies_a_grey_mammogram_with_its_rgb_network(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torchvision_standin.install(monkeypatch)
    torchvision_standin.CALLS.clear()
    bundle = zoo_bundle("breast_density_classification", tmp_path_factory)
    folder = pipeline_spec(tmp_path / "p", bundle, task="classification", outputs=["sr"])
    spec = load_pipeline_specs(folder)["zoo-test"]
    manifest = run_pipeline(spec, _mammograms(tmp_path / "mg"), tmp_path / "out", job_id=7)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "sr.dcm")
    # Classes A-D from channel_def, sigmoid probabilities of the 3-channel network.
    assert {k.split(".")[0] for k in manifest.measurements} == {"A", "B", "C", "D"}
    assert all(0.0 <= v <= 1.0 for v in manifest.measurements.values())
    # network_def#pretrained was set false: no ImageNet download was asked for.
    assert torchvision_standin.CALLS
    assert all(call.get("weights") is None for call in torchvision_standin.CALLS)


def test_classification_template_strips_load_from_a_referenced_transform_list(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = zoo_bundle("classification_template", tmp_path_factory)
    loaded = load_bundle(bundle)
    names = [type(t).__name__ for t in loaded.preprocessing.transforms]
    assert "LoadImaged" not in names
    assert "ScaleIntensityd" in names  # "$@transforms" kept the rest
    folder = pipeline_spec(tmp_path / "p", bundle, task="classification", outputs=["sr"])
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = list(ChestRadiographPhantom(size=128).write(tmp_path / "dx", findings=(True,)).paths)
    manifest = run_pipeline(spec, paths, tmp_path / "out", job_id=8)
    assert manifest.status is ManifestStatus.DONE
    _judge(tmp_path / "out", "sr.dcm")
    probabilities = [manifest.measurements[f"{n}.probability"] for n in
                     ("background", "circle", "triangle", "rectangle")]  # fmt: skip
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_weights_made_here_are_what_the_loader_reads(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = _copy(zoo_bundle("spleen_ct_segmentation", tmp_path_factory), tmp_path)
    path = make_weights(bundle, seed=7, name="model.pt")
    loaded = load_bundle(bundle)
    import torch

    state = torch.load(path, weights_only=True)
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key]), key
