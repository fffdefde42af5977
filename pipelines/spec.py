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
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.errors import PipelineConfigError

__all__ = [
    "AlgorithmSpec",
    "CodeSpec",
    "ConditionValue",
    "LabelSpec",
    "ModelKind",
    "ModelSpec",
    "OutputKind",
    "PipelineSpec",
    "SelectionMode",
    "SelectionRule",
    "SelectionSpec",
    "load_pipeline_specs",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: A condition's expected value: a regex (string), a number, or a list. A list of two
#: numbers is an inclusive range; a list of strings is a membership test in which a
#: leading "!" excludes the value (as in MONAI Deploy's series selector).
ConditionValue = str | int | float | list[str] | list[int | float]


class OutputKind(StrEnum):
    """DICOM objects a pipeline can write."""

    SEG = "seg"
    SR = "sr"


class ModelKind(StrEnum):
    """Where a pipeline's model comes from."""

    BUILTIN = "builtin"
    BUNDLE = "bundle"
    TORCHSCRIPT = "torchscript"


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
    """One output label of the model, written as one SEG segment."""

    value: int = Field(ge=1, le=255, description="Integer value of the label in the label map.")
    name: str = Field(description="Machine name, e.g. 'right_lung'; keys the measurements.")
    label: str = Field(description="Segment Label shown in the viewer.")
    category: CodeSpec = Field(description="Segmented Property Category (CID 7150).")
    type: CodeSpec = Field(description="Segmented Property Type (CID 7151).")
    color: tuple[int, int, int] | None = Field(
        default=None, description="Recommended display colour as RGB 0-255."
    )


class AlgorithmSpec(_Strict):
    """Algorithm identification written into SEG and SR (PS3.3 C.8.20.2)."""

    name: str = Field(default="", description="Algorithm Name; defaults to the pipeline name.")
    family: CodeSpec = Field(
        default=CodeSpec(value="123109", scheme="DCM", meaning="Manual Processing"),
        description="Algorithm Family (CID 7162).",
    )


class ModelSpec(_Strict):
    """The model: a built-in algorithm, a MONAI bundle directory or a TorchScript file."""

    kind: ModelKind = Field(description="builtin, bundle or torchscript.")
    name: str | None = Field(default=None, description="Name of a built-in algorithm.")
    path: Path | None = Field(default=None, description="Bundle directory or TorchScript file.")

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        if self.kind is ModelKind.BUILTIN and not self.name:
            raise ValueError("model.name is required when model.kind is 'builtin'")
        if self.kind is not ModelKind.BUILTIN and self.path is None:
            raise ValueError(f"model.path is required when model.kind is '{self.kind}'")
        return self


class SelectionRule(_Strict):
    """A named set of keyword conditions over a series' header attributes."""

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
    selection: SelectionSpec = Field(description="Series selection rules.")
    model: ModelSpec = Field(description="Model source.")
    labels: list[LabelSpec] = Field(min_length=1, description="Output labels.")
    outputs: list[OutputKind] = Field(
        default=[OutputKind.SEG, OutputKind.SR], description="Objects to write."
    )
    algorithm: AlgorithmSpec = Field(default=AlgorithmSpec(), description="Identification.")
    series_description: str = Field(
        default="AI segmentation (not for diagnosis)",
        description="Series Description of the results; says they are AI-generated.",
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
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {values}")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("time_limit_s must be greater than soft_time_limit_s")
        return self

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
        except (yaml.YAMLError, ValueError) as exc:
            raise PipelineConfigError(f"{path.name}: {exc}") from exc
        if spec.name in specs:
            raise PipelineConfigError(f"{path.name}: pipeline name {spec.name!r} used twice")
        specs[spec.name] = spec
    return specs
