"""The state DB's Alembic migrations, on SQLite and on PostgreSQL.

The schema a node had before migrations is ``tests/data/state_schema_v0.*.sql``
(what ``create_all`` made at the last commit without Alembic); a database made
from it, with rows in it, must upgrade in place and keep its rows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dicom_node.cli import main
from dicom_node.state import JobState, StateDB, migrate
from dicom_node.state.migrate import SchemaOutOfDate

DATA = Path(__file__).resolve().parents[2] / "data"

#: Rows as the previous version wrote them: one instance of one study, its job,
#: the job's event and export, and the association that delivered it.
_ROWS = [
    "INSERT INTO studies (study_uid, calling_ae, state, first_received, last_received,"
    " instance_count, accession_number, study_date)"
    " VALUES ('1.2.3', 'CT1', 'COMPLETE', '2026-01-01 10:00:00', '2026-01-01 10:00:05', 1,"
    " 'A1', '20260101')",
    "INSERT INTO series (series_uid, study_uid, modality, attributes)"
    " VALUES ('1.2.3.1', '1.2.3', 'CT', '{\"Modality\": \"CT\"}')",
    "INSERT INTO associations (calling_ae, called_ae, address, started_at, instances, bytes,"
    " failures, outcome) VALUES ('CT1', 'DICOM_NODE', '10.0.0.5', '2026-01-01 10:00:00', 1,"
    " 1000, 0, 'released')",
    "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,"
    " transfer_syntax_uid, path, size, received_at, association_id)"
    " VALUES ('1.2.3.1.1', '1.2.3.1', '1.2.3', '1.2.840.10008.5.1.4.1.1.2',"
    " '1.2.840.10008.1.2.1', 'instances/1.2.3/1.2.3.1/1.2.3.1.1.dcm', 1000,"
    " '2026-01-01 10:00:00', 1)",
    "INSERT INTO jobs (study_uid, series_uid, pipeline, pipeline_version, input_hash, inputs,"
    " queue, state, reason, attempts, created_at, updated_at, measurements)"
    " VALUES ('1.2.3', '1.2.3.1', 'ct-body-lung', '1.0.0', 'abc',"
    " '[\"instances/1.2.3/1.2.3.1/1.2.3.1.1.dcm\"]', 'cpu', 'DONE', '', 1,"
    " '2026-01-01 10:00:06', '2026-01-01 10:01:00', '{\"volume_ml\": 1.5}')",
    "INSERT INTO job_events (job_id, state, at, detail)"
    " VALUES (1, 'DONE', '2026-01-01 10:01:00', '')",
    "INSERT INTO exports (job_id, destination, path, sop_instance_uid, state, attempts,"
    " next_attempt_at, last_error) VALUES (1, 'archive', 'jobs/1/seg.dcm', '1.2.9', 'SENT', 1,"
    " '2026-01-01 10:01:00', '')",
]


def _make_previous_database(url: str) -> None:
    """A database exactly as the version before migrations made and filled it."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    ddl = (DATA / f"state_schema_v0.{dialect}.sql").read_text()
    body = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in filter(str.strip, body.split(";")):
            conn.execute(text(statement))
        for row in _ROWS:
            conn.execute(text(row))
    engine.dispose()


def test_migrated_schema_equals_the_models(state_db_url: str) -> None:
    state = StateDB(state_db_url)
    try:
        assert migrate.current_revision(state.engine) == migrate.head_revision()
        # A model changed without a migration shows up here (Alembic autogenerate).
        assert migrate.schema_differences(state.engine) == []
    finally:
        state.close()


def test_schema_check_sees_a_schema_the_models_left_behind(state_db_url: str) -> None:
    """The check above can fail: the previous schema differs from the models."""
    _make_previous_database(state_db_url)
    engine = create_engine(state_db_url)
    try:
        changed = {
            (diff[0][2], diff[0][3])
            for diff in migrate.schema_differences(engine)
            if isinstance(diff, list) and diff[0][0] == "modify_type"
        }
        assert changed == {("associations", "bytes"), ("instances", "size")}
        assert migrate.current_revision(engine) is None
    finally:
        engine.dispose()


def test_upgrade_keeps_the_rows_of_a_previous_database(state_db_url: str) -> None:
    _make_previous_database(state_db_url)
    state = StateDB(state_db_url)  # upgrades: stamps the baseline, then migrates
    try:
        assert migrate.current_revision(state.engine) == migrate.head_revision()
        assert migrate.schema_differences(state.engine) == []
        count, series = state.series_inputs("1.2.3")
        assert count == 1
        assert series[0].attributes == {"Modality": "CT"}
        assert series[0].instance_uids == ("1.2.3.1.1",)
        job = state.job(1)
        assert job is not None
        assert job.state is JobState.DONE
        assert job.measurements == {"volume_ml": 1.5}
        assert [e.state.value for e in state.exports_of(1)] == ["SENT"]
        # What the migration is for: more than 2 GiB through one association.
        assoc = state.open_association("CT2", "DICOM_NODE", "10.0.0.6")
        state.close_association(assoc, instances=9000, size=5 * 2**30, failures=0, outcome="ok")
        with state.engine.connect() as conn:
            size = conn.execute(text("SELECT bytes FROM associations WHERE id = :i"), {"i": assoc})
            assert size.scalar_one() == 5 * 2**30
    finally:
        state.close()


def test_concurrent_starts_migrate_once(state_db_url: str) -> None:
    """Several processes opening an empty database at once (receivers, web): all start."""
    code = "import sys; from dicom_node.state import StateDB; StateDB(sys.argv[1]).close()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, state_db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120)[0].decode(errors="replace") for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    engine = create_engine(state_db_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert migrate.schema_differences(engine) == []
    finally:
        engine.dispose()


def test_without_auto_upgrade_an_old_schema_is_refused_until_db_upgrade(
    state_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _make_previous_database(state_db_url)
    with pytest.raises(SchemaOutOfDate, match="dicom-node db upgrade"):
        StateDB(state_db_url, upgrade=False)
    config = tmp_path / "node.yaml"
    config.write_text(
        f"spool_dir: {tmp_path / 'spool'}\ndatabase_url: '{state_db_url}'\n"
        "database_auto_upgrade: false\n"
    )
    assert main(["db", "current", "--config", str(config)]) == 1
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert main(["db", "current", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"upgraded from revision 0001 to {migrate.head_revision()}" in out
    StateDB(state_db_url, upgrade=False).close()
