"""C-STORE response statuses the node sends (PS3.4 B.2.3, PS3.7 C.4.2.1.4).

Named here once, so a handler can never send ``0x210`` where ``0xC210`` was meant.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["StoreStatus"]


class StoreStatus(IntEnum):
    """Status codes of the Storage SCP.

    Members
    -------
    SUCCESS
        0x0000: stored, fsync'd, and recorded.
    SOP_CLASS_NOT_SUPPORTED
        0x0122 (PS3.7 C.4.2.1.4): the configuration refuses this SOP class.
    OUT_OF_RESOURCES
        0xA700 (PS3.4 B.2.3): the spool is below its free-space watermark or full.
    DATASET_MISMATCH
        0xA900: the data set's SOP Class/Instance UID disagrees with the request.
    CANNOT_UNDERSTAND
        0xC000: the data set cannot be parsed, or a required attribute is missing
        or invalid.
    PROCESSING_FAILURE
        0x0110 (PS3.7 C.4.2.1.4): an unexpected error; the reason is logged.
    """

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110
