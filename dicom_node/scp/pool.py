"""Extra receiver processes on the same port, so ingest uses every core.

pynetdicom runs one thread per association under one GIL; a single process
tops out well below what the disk can take with several senders. With
``scp.processes = N`` the node runs its own receiver plus N-1 receiver-only
processes, all bound with SO_REUSEPORT; the kernel spreads associations over
them. Each writes the same spool and commits to the same state DB, so every
instance keeps the same durability promise whichever process took it.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from multiprocessing.process import BaseProcess

from dicom_node.settings import Settings

__all__ = ["ReceiverPool"]

logger = logging.getLogger(__name__)


def _receiver_main(settings: Settings, port: int, log_level: int) -> None:
    """Entry point of one extra receiver process (spawned, imports no torch)."""
    from dicom_node.logs import setup_logging
    from dicom_node.scp.receiver import Receiver
    from dicom_node.spool import Spool
    from dicom_node.state import StateDB

    setup_logging(log_level, settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scp = settings.scp.model_copy(update={"port": port})
    state = StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
    receiver = Receiver(
        scp, settings.stability, Spool(settings.spool_dir, scp.min_free_bytes), state
    )
    handle = receiver.start(reuse_port=True)
    try:
        stop.wait()
    finally:
        handle.stop()
        state.close()


class ReceiverPool:
    """N-1 extra receiver processes beside the node's own receiver.

    Parameters
    ----------
    settings : Settings
        Node settings; ``scp.processes`` says how many receivers in all.
    port : int
        The port the node's own receiver bound (resolves a configured 0).
    """

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []

    def _spawn(self) -> BaseProcess:
        proc = self._ctx.Process(
            target=_receiver_main,
            args=(self.settings, self.port, logging.getLogger().getEffectiveLevel()),
            name="dicom-node-receiver",
            daemon=True,
        )
        proc.start()
        return proc

    def start(self) -> None:
        """Start the extra processes."""
        self._procs = [self._spawn() for _ in range(self.settings.scp.processes - 1)]
        if self._procs:
            logger.info("%d extra receiver processes on port %d", len(self._procs), self.port)

    def check(self) -> None:
        """Restart any extra receiver that died."""
        for i, proc in enumerate(self._procs):
            if not proc.is_alive():
                logger.error("receiver process %s exited (%s); restarting", proc.pid, proc.exitcode)
                self._procs[i] = self._spawn()

    def stop(self) -> None:
        """Stop every extra receiver and wait for it."""
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        self._procs = []
