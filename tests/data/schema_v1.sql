-- The schema smlocal created before schema versions existed (commit 7b665c2): user_version 0.
CREATE TABLE training_jobs (
	id INTEGER NOT NULL, 
	account_id VARCHAR(12) NOT NULL, 
	region VARCHAR(32) NOT NULL, 
	name VARCHAR(63) NOT NULL, 
	arn VARCHAR(256) NOT NULL, 
	request_json TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	secondary_status VARCHAR(32) NOT NULL, 
	failure_reason VARCHAR(1024), 
	creation_time FLOAT NOT NULL, 
	last_modified_time FLOAT NOT NULL, 
	training_start_time FLOAT, 
	training_end_time FLOAT, 
	runner_state VARCHAR(16) NOT NULL, 
	final_metrics_json TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_job_name UNIQUE (account_id, region, name), 
	UNIQUE (arn)
);
CREATE INDEX ix_training_jobs_status ON training_jobs (status);
CREATE INDEX ix_training_jobs_creation_time ON training_jobs (creation_time);
CREATE INDEX ix_training_jobs_runner_state ON training_jobs (runner_state);
CREATE TABLE tags (
	id INTEGER NOT NULL, 
	resource_arn VARCHAR(256) NOT NULL, 
	"key" VARCHAR(128) NOT NULL, 
	value VARCHAR(256) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_tag_key UNIQUE (resource_arn, "key")
);
CREATE INDEX ix_tags_resource_arn ON tags (resource_arn);
CREATE TABLE status_transitions (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	start_time FLOAT NOT NULL, 
	end_time FLOAT, 
	message VARCHAR(1024) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES training_jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_status_transitions_job_id ON status_transitions (job_id);
