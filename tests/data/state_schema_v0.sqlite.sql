-- The state DB's schema before migrations (dicom-node at commit a996015), as
-- SQLAlchemy's create_all made it on sqlite: the tables, then their indexes.
-- tests/unit/dicom_node/test_migrations.py upgrades a database made from it.

CREATE TABLE associations (
	id INTEGER NOT NULL,
	calling_ae VARCHAR(16) NOT NULL,
	called_ae VARCHAR(16) NOT NULL,
	address VARCHAR(64) NOT NULL,
	started_at DATETIME NOT NULL,
	ended_at DATETIME,
	instances INTEGER NOT NULL,
	bytes INTEGER NOT NULL,
	failures INTEGER NOT NULL,
	outcome VARCHAR(16) NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE jobs (
	id INTEGER NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	pipeline VARCHAR(64) NOT NULL,
	pipeline_version VARCHAR(32) NOT NULL,
	input_hash VARCHAR(64) NOT NULL,
	inputs JSON NOT NULL,
	queue VARCHAR(16) NOT NULL,
	state VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	attempts INTEGER NOT NULL,
	task_id VARCHAR(64),
	dispatched_at DATETIME,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	measurements JSON NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (series_uid, pipeline, pipeline_version, input_hash)
);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE INDEX ix_jobs_study_uid ON jobs (study_uid);

CREATE TABLE studies (
	study_uid VARCHAR(64) NOT NULL,
	calling_ae VARCHAR(16) NOT NULL,
	state VARCHAR(16) NOT NULL,
	first_received DATETIME NOT NULL,
	last_received DATETIME NOT NULL,
	complete_after DATETIME,
	instance_count INTEGER NOT NULL,
	accession_number VARCHAR(16) NOT NULL,
	study_date VARCHAR(8) NOT NULL,
	PRIMARY KEY (study_uid)
);

CREATE INDEX ix_studies_state ON studies (state);

CREATE TABLE exports (
	id INTEGER NOT NULL,
	job_id INTEGER NOT NULL,
	destination VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	sop_instance_uid VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at DATETIME NOT NULL,
	last_error TEXT NOT NULL,
	sent_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (job_id, destination, sop_instance_uid),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_exports_job_id ON exports (job_id);

CREATE INDEX ix_exports_state ON exports (state);

CREATE TABLE job_events (
	id INTEGER NOT NULL,
	job_id INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	at DATETIME NOT NULL,
	detail TEXT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_job_events_job_id ON job_events (job_id);

CREATE TABLE series (
	series_uid VARCHAR(64) NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	modality VARCHAR(16) NOT NULL,
	attributes JSON NOT NULL,
	PRIMARY KEY (series_uid),
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);

CREATE INDEX ix_series_study_uid ON series (study_uid);

CREATE TABLE instances (
	sop_instance_uid VARCHAR(64) NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	transfer_syntax_uid VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	size INTEGER NOT NULL,
	received_at DATETIME NOT NULL,
	association_id INTEGER,
	PRIMARY KEY (sop_instance_uid),
	FOREIGN KEY(series_uid) REFERENCES series (series_uid)
);

CREATE INDEX ix_instances_received_at ON instances (received_at);

CREATE INDEX ix_instances_series_uid ON instances (series_uid);

CREATE INDEX ix_instances_study_uid ON instances (study_uid);
