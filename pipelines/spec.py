"""The pipeline definition: what one YAML file in ``config/pipelines/`` says.

A pipeline names itself and its version (both go into the deterministic result
UIDs), says which series it wants (selection rules, evaluated by
``dicom_node.routing``), where its model comes from, which labels it produces
with their SNOMED CT codes, and which DICOM objects it writes.

This module imports no torch, so the node can read definitions for routing.

Examples
--------
>>> spec = PipelineSpec.model_validate({
...     "name": "ct-demo", "version": "1.0.0",
...     "selection": {"rules": [{"name": "CT", "conditions": {"Modality": "CT"}}]},
...     "model": {"kind": "builtin", "name": "body_lung_threshold"},
...     "labels": [{"value": 1, "name": "body", "label": "Body",
...                 "category": {"value": "123037004", "meaning": "Anatomical Structure"},
...                 "type": {"value": "38266002", "meaning": "Entire body"}}],
... })
>>> spec.outputs
[<OutputKind.SEG: 'seg'>, <OutputKind.SR: 'sr'>]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.errors import PipelineConfigError

__all__ = [
    "Activation",
    "AlgorithmSpec",
    "BoxSpace",
    "BundleLabels",
    "CodeSpec",
    "ConditionValue",
    "DetectionSpec",
    "LabelSpec",
    "ModelKind",
    "ModelSpec",
    "OutputKind",
    "PipelineSpec",
    "PreprocessingSpec",
    "SegmentationKind",
    "SelectionMode",
    "SelectionRule",
    "SelectionSpec",
    "TASK_OUTPUTS",
    "TaskKind",
    "load_pipeline_specs",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: A condition's expected value: a regex (string; a leading "!" negates it), a number, or
#: a list. A list of two numbers is an inclusive range; a list of strings is a membership
#: test in which a leading "!" excludes the value (as in MONAI Deploy's series selector).
#: On an absent or empty attribute a condition holds exactly when it only excludes
#: (a negated regex, a list of "!" items): see :mod:`dicom_node.routing` and docs/routing.md.
ConditionValue = str | int | float | list[str] | list[int | float]


class OutputKind(StrEnum):
    """Result kinds a pipeline can write; each export destination receives some of them."""

    #: Segmentation (one segment per label).
    SEG = "seg"
    #: Comprehensive 3D SR, TID 1500: measurements, findings, planar regions.
    SR = "sr"
    #: Burned-in overlay of the segments on copies of the source slices (Secondary Capture).
    SC = "sc"
    #: Grayscale Softcopy Presentation State: segment outlines on the source images.
    GSPS = "gsps"
    #: RT Structure Set: one ROI per segment, contours on the source planes.
    RTSTRUCT = "rtstruct"
    #: Key Object Selection: the images that hold findings.
    KOS = "kos"
    #: Encapsulated PDF: the report a person reads.
    PDF = "pdf"


class TaskKind(StrEnum):
    """What the model does: label voxels of a volume, or classify each image."""

    #: A 3-D series becomes a volume; the model returns one mask per label.
    SEGMENTATION = "segmentation"
    #: Each projection radiograph (CR, DX, MG) is classified on its own (SR, KOS, PDF).
    CLASSIFICATION = "classification"
    #: A 3-D series becomes a volume; the model returns boxes with scores (SR only).
    DETECTION = "detection"


#: What each kind of task can write. A classification has no masks to draw or contour.
TASK_OUTPUTS: dict[TaskKind, frozenset[OutputKind]] = {
    TaskKind.SEGMENTATION: frozenset(OutputKind),
    TaskKind.CLASSIFICATION: frozenset({OutputKind.SR, OutputKind.KOS, OutputKind.PDF}),
    TaskKind.DETECTION: frozenset({OutputKind.SR}),
}


class SegmentationKind(StrEnum):
    """Segmentation Type of the SEG (PS3.3 C.8.20.2): one frame per segment, or a label map."""

    BINARY = "binary"
    LABELMAP = "labelmap"


class Activation(StrEnum):
    """What turns a TorchScript model's raw output into probabilities."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


class ModelKind(StrEnum):
    """Where a pipeline's model comes from."""

    BUILTIN = "builtin"
    BUNDLE = "bundle"
    TORCHSCRIPT = "torchscript"


class BundleLabels(StrEnum):
    """Which of a bundle's output labels a pipeline writes."""

    #: Every label of the bundle's ``channel_def`` (background excepted); the YAML's
    #: ``labels`` only override the codes the label table gives.
    ALL = "all"
    #: Only the labels the YAML lists.
    LISTED = "listed"


class BoxSpace(StrEnum):
    """Coordinates of a detector's boxes after the bundle's postprocessing."""

    #: Patient coordinates in mm, DICOM's LPS (``AffineBoxToWorldCoordinated`` with
    #: ``affine_lps_to_ras: true`` on a node-loaded image).
    WORLD_LPS = "world_lps"
    #: Patient coordinates in mm, RAS (``AffineBoxToWorldCoordinated`` without the flag).
    WORLD_RAS = "world_ras"
    #: Voxel indices of the preprocessed image (no ``AffineBoxToWorldCoordinated``).
    IMAGE = "image"


class SelectionMode(StrEnum):
    """Whether every matching series gets a job, or only the best one."""

    ALL = "all"
    BEST = "best"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    """A coded concept (PS3.3 8.8): value, scheme designator and meaning."""

    value: str = Field(description="Code Value, e.g. '10200004'.")
    scheme: str = Field(default="SCT", description="Coding Scheme Designator.")
    meaning: str = Field(description="Code Meaning, e.g. 'Liver'.")


class LabelSpec(_Strict):
    """One output label of the model, written as one SEG segment (or SR finding).

    For a bundle, labels are matched to the bundle's ``channel_def`` by ``name`` and
    ``value`` may be left out (the channel gives it); for a detector, ``value`` is the
    class the detector reports (0 for the first).
    """

    value: int | None = Field(
        default=None,
        ge=0,
        le=255,
        description="Integer value of the label in the label map (a detector's class).",
    )
    name: str = Field(description="Machine name, e.g. 'right_lung'; keys the measurements.")
    label: str = Field(description="Segment Label shown in the viewer.")
    category: CodeSpec = Field(description="Segmented Property Category (CID 7150).")
    type: CodeSpec = Field(description="Segmented Property Type (CID 7151).")
    modifier: CodeSpec | None = Field(
        default=None, description="Segmented Property Type Modifier, e.g. Left (CID 244)."
    )
    color: tuple[int, int, int] | None = Field(
        default=None, description="Recommended display colour as RGB 0-255."
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Classification only: the probability from which the finding is present.",
    )
    finding: bool = Field(
        default=False,
        description="Segmentation: this label marks a finding (a lesion, a nodule), so the "
        "image that best shows it is a key image (KOS, PDF). Anatomy is not a finding. A "
        "classification's labels are findings whenever they are present.",
    )


class AlgorithmSpec(_Strict):
    """Algorithm identification written into SEG and SR (PS3.3 C.8.20.2)."""

    name: str = Field(default="", description="Algorithm Name; defaults to the pipeline name.")
    family: CodeSpec = Field(
        default=CodeSpec(value="123109", scheme="DCM", meaning="Manual Processing"),
        description="Algorithm Family (CID 7162).",
    )


class PreprocessingSpec(_Strict):
    """The declared preprocessing of a TorchScript model (a bundle brings its own).

    The steps run in this order on the channel-first image of
    :meth:`pipelines.volume.Volume.to_metatensor` (or the radiograph's): resize
    to ``spatial_size`` (area interpolation), clip and scale ``intensity_range``
    or the ``percentiles`` range to [0, 1], z-score if ``normalize``. The output
    is resized back to the input's size (nearest neighbour) and ``activation``
    turns it into probabilities.
    """

    spatial_size: list[int] | None = Field(
        default=None, description="Resize the input to this size (2 or 3 values)."
    )
    intensity_range: tuple[float, float] | None = Field(
        default=None, description="[low, high]: clip to it and scale to [0, 1]."
    )
    percentiles: tuple[float, float] | None = Field(
        default=None,
        description="[low, high] percentiles (0-100) of the image: clip to them, scale to [0, 1].",
    )
    normalize: bool = Field(default=False, description="Z-score the intensities (after scaling).")
    activation: Activation = Field(
        default=Activation.SOFTMAX, description="softmax, sigmoid or none, over the channels."
    )

    @field_validator("spatial_size")
    @classmethod
    def _check_size(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) not in (2, 3) or min(value) < 1):
            raise ValueError(f"spatial_size must hold 2 or 3 positive sizes, got {value}")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> PreprocessingSpec:
        if self.intensity_range is not None and self.percentiles is not None:
            raise ValueError("give intensity_range or percentiles, not both")
        for name, pair in (
            ("intensity_range", self.intensity_range),
            ("percentiles", self.percentiles),
        ):
            if pair is not None and not pair[0] < pair[1]:
                raise ValueError(f"{name} must be [low, high] with low < high, got {list(pair)}")
        if (
            self.percentiles is not None
            and not 0 <= self.percentiles[0] < self.percentiles[1] <= 100
        ):
            raise ValueError(f"percentiles must lie in [0, 100], got {list(self.percentiles)}")
        return self


class ModelSpec(_Strict):
    """The model: a built-in algorithm, a MONAI bundle directory or a TorchScript file.

    A relative ``path`` is taken from the folder of the pipeline YAML that names
    it (:func:`load_pipeline_specs` resolves it), so a definition and its model
    can travel together.
    """

    kind: ModelKind = Field(description="builtin, bundle or torchscript.")
    name: str | None = Field(default=None, description="Name of a built-in algorithm.")
    path: Path | None = Field(default=None, description="Bundle directory or TorchScript file.")
    preprocessing: PreprocessingSpec | None = Field(
        default=None, description="TorchScript only: the preprocessing the model expects."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Bundle only: config values to replace, by ID (``inferer#sw_batch_size``) "
        "or by a unique last part (``highres``), as ``monai.bundle run --key value`` would.",
    )
    weights: str | None = Field(
        default=None,
        description="Bundle only: weights file inside the bundle (``models/model_lowres.pt``); "
        "default: the one its CheckpointLoader names, else models/model.pt, else model.ts.",
    )
    memory_budget_mb: int | None = Field(
        default=None,
        ge=256,
        description="Bundle only: peak memory one job may use on a CPU worker; the stitching "
        "and postprocessing are planned to fit, and a job that cannot fit FAILS before it runs.",
    )

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        if self.kind is ModelKind.BUILTIN and not self.name:
            raise ValueError("model.name is required when model.kind is 'builtin'")
        if self.kind is not ModelKind.BUILTIN and self.path is None:
            raise ValueError(f"model.path is required when model.kind is '{self.kind}'")
        if self.kind is ModelKind.TORCHSCRIPT and self.preprocessing is None:
            raise ValueError("model.preprocessing is required when model.kind is 'torchscript'")
        if self.kind is not ModelKind.TORCHSCRIPT and self.preprocessing is not None:
            raise ValueError(
                f"model.preprocessing is only for 'torchscript' (a {self.kind} brings its own)"
            )
        if self.kind is not ModelKind.BUNDLE:
            for name, value in (
                ("overrides", self.overrides or None),
                ("weights", self.weights),
                ("memory_budget_mb", self.memory_budget_mb),
            ):
                if value is not None:
                    raise ValueError(f"model.{name} is only for 'bundle'")
        if self.weights is not None and (
            Path(self.weights).is_absolute() or ".." in Path(self.weights).parts
        ):
            raise ValueError(f"model.weights must be a path inside the bundle, got {self.weights}")
        return self


class DetectionSpec(_Strict):
    """How a detector's boxes become findings."""

    score_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Boxes scoring below it are not reported."
    )
    max_findings: int = Field(
        default=20, ge=1, le=500, description="At most this many findings, best first."
    )
    box_key: str = Field(default="box", description="Key of the boxes in the bundle's output.")
    label_key: str = Field(default="label", description="Key of the class labels.")
    score_key: str = Field(default="label_scores", description="Key of the scores.")
    box_mode: str | None = Field(
        default=None,
        description="MONAI box mode of the output (xyzxyz, cccwhd, ...); default: the last "
        "ConvertBoxModed's dst_mode in the postprocessing, else xyzxyz.",
    )
    box_space: BoxSpace | None = Field(
        default=None,
        description="world_lps, world_ras or image; default: read from the postprocessing.",
    )


class SelectionRule(_Strict):
    """A named set of keyword conditions over a series' header attributes.

    "Not a scout" is ``SeriesDescription: "!(?i)scout"``: a negated condition holds on a
    series without a description, where a negative lookahead (a positive regex) fails.
    """

    name: str = Field(description="Shown in the job's routing reason.")
    match: Literal["all", "any"] = Field(
        default="all", description="Whether all conditions or any one must hold."
    )
    conditions: dict[str, ConditionValue] = Field(
        description="DICOM keyword (or 'Orientation') to expected value."
    )

    @field_validator("conditions")
    @classmethod
    def _check_regexes(cls, value: dict[str, ConditionValue]) -> dict[str, ConditionValue]:
        for keyword, expected in value.items():
            if isinstance(expected, str):
                try:
                    re.compile(expected.removeprefix("!"))
                except re.error as exc:
                    raise ValueError(f"condition {keyword!r}: bad regex: {exc}") from exc
        return value


class SelectionSpec(_Strict):
    """Which series a pipeline runs on: a series is selected when any rule matches."""

    mode: SelectionMode = Field(default=SelectionMode.ALL, description="all or best.")
    rules: list[SelectionRule] = Field(min_length=1, description="At least one rule.")


class PipelineSpec(_Strict):
    """A pipeline definition (one YAML file)."""

    name: str = Field(description="Lower-case name; part of the result UIDs.")
    version: str = Field(description="Version; part of the result UIDs.")
    description: str = Field(default="", description="What the pipeline does, for the admin.")
    enabled: bool = Field(default=True, description="Disabled pipelines are never routed.")
    queue: Literal["cpu", "gpu"] = Field(default="cpu", description="Celery queue.")
    task: TaskKind = Field(
        default=TaskKind.SEGMENTATION, description="segmentation or classification."
    )
    selection: SelectionSpec = Field(description="Series selection rules.")
    model: ModelSpec = Field(description="Model source.")
    labels: list[LabelSpec] = Field(
        default_factory=list,
        description="Output labels; for a bundle, overrides of the label table's codes.",
    )
    bundle_labels: BundleLabels | None = Field(
        default=None,
        description="all (every channel_def label) or listed (only `labels`); default: "
        "listed when labels are given, else all.",
    )
    detection: DetectionSpec = Field(
        default=DetectionSpec(), description="Detection only: threshold and box format."
    )
    outputs: list[OutputKind] = Field(
        default=[OutputKind.SEG, OutputKind.SR],
        description="Result kinds written when no export destination asks for others; a "
        "destination's own list (export.destinations[].outputs) adds to what is written.",
    )
    segmentation_type: SegmentationKind = Field(
        default=SegmentationKind.BINARY,
        description="binary (segments may overlap) or labelmap (where they overlap, the later "
        "label wins).",
    )
    algorithm: AlgorithmSpec = Field(default=AlgorithmSpec(), description="Identification.")
    series_description: str = Field(
        default="AI segmentation (not for diagnosis)",
        description="Series Description of the results; says they are AI-generated.",
    )
    cleared_for_clinical_use: bool = Field(
        default=False,
        description="The model is cleared (CE, FDA) for clinical use at this site; otherwise "
        "every report says 'not for diagnosis'.",
    )
    soft_time_limit_s: int = Field(default=600, ge=1, description="Celery soft time limit.")
    time_limit_s: int = Field(default=900, ge=1, description="Celery hard time limit.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name must match {_NAME.pattern}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_labels(self) -> PipelineSpec:
        if not self.labels and self.model.kind is not ModelKind.BUNDLE:
            raise ValueError("labels: at least one is required (only a bundle brings its own)")
        if not self.labels and self.task is TaskKind.DETECTION:
            raise ValueError("labels: a detection pipeline names the class(es) it reports")
        if self.bundle_labels is not None and self.model.kind is not ModelKind.BUNDLE:
            raise ValueError("bundle_labels is only for a bundle model")
        if self.bundle_labels is BundleLabels.LISTED and not self.labels:
            raise ValueError("bundle_labels: listed needs labels")
        if self.model.kind is not ModelKind.BUNDLE or self.task is TaskKind.DETECTION:
            missing = [label.name for label in self.labels if label.value is None]
            if missing:
                raise ValueError(f"label(s) {', '.join(missing)} need a value")
        if self.task is TaskKind.SEGMENTATION:
            zero = [label.name for label in self.labels if label.value == 0]
            if zero:
                raise ValueError(f"label(s) {', '.join(zero)}: 0 is the background of a label map")
        values = [label.value for label in self.labels if label.value is not None]
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {values}")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("time_limit_s must be greater than soft_time_limit_s")
        if not self.outputs:
            raise ValueError("outputs must name at least one result kind")
        unable = sorted(set(self.outputs) - TASK_OUTPUTS[self.task])
        if unable:
            raise ValueError(
                f"a {self.task.value} pipeline cannot write {', '.join(unable)} (it can write "
                f"{', '.join(sorted(TASK_OUTPUTS[self.task]))})"
            )
        if self.task is not TaskKind.SEGMENTATION and self.model.kind is ModelKind.BUILTIN:
            raise ValueError(f"a {self.task.value} pipeline needs a bundle or torchscript model")
        if self.task is TaskKind.DETECTION and self.model.kind is not ModelKind.BUNDLE:
            raise ValueError("a detection pipeline needs a bundle model")
        return self

    def producible(self, requested: Iterable[OutputKind]) -> tuple[OutputKind, ...]:
        """The kinds a job writes when ``requested`` are wanted, in :class:`OutputKind` order.

        Kinds this pipeline's task cannot write are dropped (a classification
        draws no outlines). An SR of a segmentation references its SEG, so
        asking for the SR writes the SEG too: every reference a result makes
        resolves on the spool, whichever destination receives it.

        Parameters
        ----------
        requested : Iterable[OutputKind]
            What the export destinations want (see ``dicom_node.profiles``).

        Returns
        -------
        tuple[OutputKind, ...]
            What the worker writes; may be empty.
        """
        wanted = set(requested) & TASK_OUTPUTS[self.task]
        if self.task is TaskKind.SEGMENTATION and OutputKind.SR in wanted:
            wanted.add(OutputKind.SEG)
        return tuple(kind for kind in OutputKind if kind in wanted)

    @property
    def all_bundle_labels(self) -> bool:
        """Whether every label of the bundle's ``channel_def`` is written."""
        if self.model.kind is not ModelKind.BUNDLE or self.task is TaskKind.DETECTION:
            return False
        if self.bundle_labels is None:
            return not self.labels
        return self.bundle_labels is BundleLabels.ALL

    @property
    def algorithm_name(self) -> str:
        """Algorithm Name written into the objects."""
        return self.algorithm.name or self.name


def load_pipeline_specs(directory: Path) -> dict[str, PipelineSpec]:
    """Read every ``*.yaml`` / ``*.yml`` pipeline definition in a directory.

    Parameters
    ----------
    directory : pathlib.Path
        Folder of pipeline YAML files.

    Returns
    -------
    dict[str, PipelineSpec]
        Definitions by name, in file-name order.

    Raises
    ------
    PipelineConfigError
        If the folder is missing, a file is not valid YAML or not a valid
        definition, or two files use the same name. The message names the file.
    """
    if not directory.is_dir():
        raise PipelineConfigError(f"pipeline directory {directory} does not exist")
    specs: dict[str, PipelineSpec] = {}
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in files:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            spec = PipelineSpec.model_validate(raw)
            model_path = spec.model.path
            if model_path is not None and not model_path.is_absolute():
                # Relative to the definition, so config and models can move together.
                model = spec.model.model_copy(update={"path": (path.parent / model_path).resolve()})
                spec = spec.model_copy(update={"model": model})
        except (yaml.YAMLError, ValueError) as exc:
            raise PipelineConfigError(f"{path.name}: {exc}") from exc
        if spec.name in specs:
            raise PipelineConfigError(f"{path.name}: pipeline name {spec.name!r} used twice")
        specs[spec.name] = spec
    return specs
