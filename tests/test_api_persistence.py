"""State survives restarts; concurrent creates of one name have exactly one winner."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from tests.support.jobs import job_request


def test_jobs_tags_and_transitions_survive_restart(smlocal_factory):
    server = smlocal_factory("--no-run-jobs")
    sm = server.client()
    arn = sm.create_training_job(**job_request("survivor", Tags=[{"Key": "k", "Value": "v"}]))["TrainingJobArn"]
    sm.create_training_job(**job_request("stopped-one"))
    sm.stop_training_job(TrainingJobName="stopped-one")
    before = sm.describe_training_job(TrainingJobName="stopped-one")

    server.restart(kill=True)  # no graceful shutdown: what was acknowledged must be on disk
    sm = server.client()
    after = sm.describe_training_job(TrainingJobName="stopped-one")
    for key in ("TrainingJobStatus", "SecondaryStatus", "SecondaryStatusTransitions", "CreationTime",
                "LastModifiedTime"):
        assert after[key] == before[key], key
    assert sm.describe_training_job(TrainingJobName="survivor")["TrainingJobStatus"] == "InProgress"
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
    assert len(sm.list_training_jobs()["TrainingJobSummaries"]) == 2


def test_concurrent_creates_of_one_name(api_server, unique_name):
    name = unique_name()

    def create(i: int) -> str:
        client = api_server.client()
        try:
            client.create_training_job(**job_request(name, HyperParameters={"attempt": str(i)}))
            return "created"
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(create, range(32)))
    assert outcomes.count("created") == 1
    assert outcomes.count("ResourceInUse") == 31
    winner = api_server.client().describe_training_job(TrainingJobName=name)
    assert winner["HyperParameters"]["attempt"] == str(outcomes.index("created"))


def test_database_location_flag(smlocal_factory, tmp_path):
    db = tmp_path / "elsewhere" / "jobs.db"
    server = smlocal_factory("--no-run-jobs", "--db", str(db))
    server.client().create_training_job(**job_request("in-custom-db"))
    assert db.exists()
    assert not (server.data_dir / "smlocal.db").exists()
