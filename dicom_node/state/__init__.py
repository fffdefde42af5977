"""The state database: studies, series, instances, jobs, exports, associations."""

from dicom_node.state.db import (
    ExportView,
    InstanceRecord,
    JobView,
    NewJob,
    SeriesInputs,
    StateDB,
)
from dicom_node.state.schema import ExportState, JobState, StudyState

__all__ = [
    "ExportState",
    "ExportView",
    "InstanceRecord",
    "JobState",
    "JobView",
    "NewJob",
    "SeriesInputs",
    "StateDB",
    "StudyState",
]
