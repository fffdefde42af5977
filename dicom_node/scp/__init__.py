"""The DICOM receiver: C-ECHO and C-STORE SCP with a durable spool."""

from dicom_node.scp.receiver import Receiver, ReceiverHandle
from dicom_node.scp.status import StoreStatus

__all__ = ["Receiver", "ReceiverHandle", "StoreStatus"]
