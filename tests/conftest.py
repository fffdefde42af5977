"""Session fixtures: the real companion servers, started once per test session.

Each fixture starts the real binary (redis-server, Orthanc, PostgreSQL) in a
temporary folder on a free port, waits until it answers, and stops it by its PID.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Literal

import pydicom
import pytest
import redis

from dicom_node.services import (
    OrthancHandle,
    PostgresHandle,
    RedisHandle,
    run_orthanc,
    run_postgres,
    run_redis,
)


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


_next_db = itertools.count(1)


@pytest.fixture
def broker_url(redis_server: RedisHandle) -> str:
    """A Redis database of its own for one test's node, flushed first.

    Job IDs are per node: two nodes on one database would see each other's tasks.
    """
    db = next(_next_db) % 14 + 1  # 15 is the end-to-end module's
    client = redis.Redis(port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    return redis_server.db_url(db)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    """A real Orthanc (Debian package) as the archive, for the whole session."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as handle:
        yield handle


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresHandle]:
    """A real PostgreSQL server (Debian package) for the whole session."""
    with run_postgres(tmp_path_factory.mktemp("postgres")) as handle:
        yield handle


def new_postgres_database(server: PostgresHandle) -> str:
    """A fresh, empty database on the session's server; its SQLAlchemy URL.

    The name is random: test modules import this module under a second name, so a
    counter here would count twice from 1.
    """
    return server.create_database(f"state_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty state DB, once on SQLite and once on PostgreSQL (``database_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
    server: PostgresHandle = request.getfixturevalue("postgres_server")
    return new_postgres_database(server)


@pytest.fixture(params=["pynetdicom", "builtin"])
def scp_engine(request: pytest.FixtureRequest) -> Literal["pynetdicom", "builtin"]:
    """Each receiver test runs with both DICOM upper layers (``scp.engine``)."""
    engine: Literal["pynetdicom", "builtin"] = request.param
    return engine
