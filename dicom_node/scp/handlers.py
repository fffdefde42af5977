"""pynetdicom event handlers of the Storage SCP, bound with their dependencies.

A thin layer: each handler turns a pynetdicom event into a call of
:mod:`dicom_node.scp.storage`, where the node's behaviour lives.
:func:`handle_store` is an *intervention* handler: it returns a status and
never raises, because pynetdicom turns an exception into a bare 0xC211 that
tells the sender nothing.
"""

from __future__ import annotations

from io import BytesIO
from typing import cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.scp.storage import (
    StoreContext,
    StoreRequest,
    association_released,
    caller_allowed,
    close_association,
    open_association,
    store_instance,
)

__all__ = [
    "handle_aborted",
    "handle_accepted",
    "handle_closed",
    "handle_echo",
    "handle_released",
    "handle_requested",
    "handle_store",
]

#: pynetdicom's DUL thread sleeps this long whenever its queue is empty (default
#: 1 ms). Several hand-offs per C-STORE make that ~15 % of a single sender's time;
#: 0.1 ms costs a little CPU only while an association is open.
_DUL_LOOP_DELAY_S = 0.0001


def handle_echo(event: evt.Event) -> int:  # noqa: ARG001
    """Answer C-ECHO with success (PS3.7 9.1.5)."""
    return 0x0000


def handle_requested(event: evt.Event, ctx: StoreContext) -> None:
    """Refuse callers that the allow-list does not name, with A-ASSOCIATE-RJ (1, 1, 3)."""
    primitive = event.assoc.requestor.primitive
    calling_ae = str(primitive.calling_ae_title if primitive else "").strip()
    if caller_allowed(ctx, calling_ae, str(event.assoc.requestor.address)):
        return
    event.assoc.acse.send_reject(0x01, 0x01, 0x03)
    event.assoc.kill()


def handle_accepted(event: evt.Event, ctx: StoreContext) -> None:
    """Open an association log row when an association is accepted."""
    event.assoc.dul._run_loop_delay = _DUL_LOOP_DELAY_S
    requestor = event.assoc.requestor
    open_association(ctx, id(event.assoc), str(requestor.ae_title).strip(), str(requestor.address))


def handle_released(event: evt.Event, ctx: StoreContext) -> None:
    """Note a release; senders configured for it complete their studies early."""
    stats = ctx.stats(id(event.assoc))
    if stats is not None:
        association_released(ctx, stats)


def handle_aborted(event: evt.Event, ctx: StoreContext) -> None:
    """Note an abort in the association log."""
    stats = ctx.stats(id(event.assoc))
    if stats is not None:
        stats.outcome = "aborted"


def handle_closed(event: evt.Event, ctx: StoreContext) -> None:
    """Finish the association log row when the connection closes."""
    close_association(ctx, id(event.assoc))


def handle_store(event: evt.Event, ctx: StoreContext) -> int:
    """Store one instance durably, or refuse it with a named status.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-STORE request event.
    ctx : StoreContext
        Spool, state DB and policies.

    Returns
    -------
    int
        A :class:`~dicom_node.scp.status.StoreStatus` value.
    """
    primitive = cast(C_STORE, event.request)
    request = StoreRequest(
        sop_class_uid=str(primitive.AffectedSOPClassUID),
        sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
        transfer_syntax=event.context.transfer_syntax,
        stream=primitive.DataSet if isinstance(primitive.DataSet, BytesIO) else None,
    )
    return store_instance(ctx, request, ctx.stats(id(event.assoc)))
