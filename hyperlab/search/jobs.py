"""A search launched from a laptop runs as a Ray job: its driver runs on the head node and survives the
laptop closing. ``hyperlab search FILE --address http://HEAD:8265`` submits ``hyperlab search`` (with
the search-space file in the job's working directory and ``--address auto``) and follows its log until
the search ends; Ctrl-C stops following, not the search. ``hyperlab status/logs/stop NAME --address
http://HEAD:8265`` find the search's latest job by its metadata.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from pathlib import Path

from hyperlab.errors import UserError

METADATA_KEY = "hyperlab_search"
STOP_GRACE_S = 120
"""How long ``ray job stop`` (``hyperlab stop``) lets the driver close its record after SIGTERM before it
kills it (Ray's default is 3 s; a driver whose MLflow server was just unreachable may need longer)."""


def client(address: str):
    try:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"--address {address}: cannot reach the Ray job server ({str(err).splitlines()[0][:200]}); "
                        "forward the head's port 8265 (ray dashboard cluster.yaml) or check the address") from None


def submit(address: str, name: str, argv: list[str], files: list[Path]) -> str:
    """Submit ``hyperlab ARGV`` as a job whose working directory holds ``files``; returns its id."""
    jobs = client(address)
    submission_id = f"hyperlab-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="hyperlab-job-") as folder:
        for file in files:
            shutil.copy(file, Path(folder) / file.name)
        jobs.submit_job(entrypoint=shlex.join(["hyperlab", *argv]), submission_id=submission_id,
                        runtime_env={"working_dir": folder, "env_vars": {"PYTHONUNBUFFERED": "1",
                                                                         "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}},
                        metadata={METADATA_KEY: name})
    return submission_id


def latest_job(address: str, name: str):
    """The newest job of search ``name`` on the cluster, or UserError."""
    found = [job for job in client(address).list_jobs() if (job.metadata or {}).get(METADATA_KEY) == name]
    if not found:
        raise UserError(f"no Ray job of search {name!r} on {address}")
    return max(found, key=lambda job: job.start_time or 0)


def follow(address: str, submission_id: str) -> str:
    """Print the job's log as it grows until the job ends; returns its final status. Ctrl-C detaches."""
    import asyncio

    jobs = client(address)

    async def tail():
        async for lines in jobs.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the search runs on. `hyperlab logs {submission_id} --address {address}` "
              "follows it again, `hyperlab stop` ends it")
        return "RUNNING"
    return str(jobs.get_job_status(submission_id))
