"""Session fixtures: the real companion servers, started once per test session.

Each fixture starts the real binary (redis-server, Orthanc) in a temporary
folder on a free port, waits until it answers, and stops it by its PID.
"""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest

from dicom_node.services import OrthancHandle, RedisHandle, run_orthanc, run_redis


@pytest.fixture(autouse=True)
def _strict_pydicom() -> Iterator[None]:
    """Make pydicom refuse to write invalid values, so no test writes one unnoticed."""
    saved = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = saved


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHandle]:
    """A real redis-server on loopback for the whole session."""
    with run_redis(tmp_path_factory.mktemp("redis")) as handle:
        yield handle


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    """A real Orthanc (Debian package) as the archive, for the whole session."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as handle:
        yield handle
