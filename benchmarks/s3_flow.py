"""Seed 003's S3 flow into an S3 store, against a direct boto3 copy.

``python -m benchmarks.s3_flow [--scenario small|large]``.

One moto S3 server (``moto_server``, its own process) holds a source bucket and
the store buckets. Two scenarios: 2,000 small files (4 KiB) and 20 files of
50 MiB. For each, in the same run:

- ``hydra``: ``scrapy crawl s3 -a task=@task.json`` (SQLite state, the ``s3://``
  store, JSON-lines topics): list, stream each file to disk while hashing, check
  the channel's history, upload, record, publish. Timed by the job's own
  ``execution_time_seconds`` (listing to result; process start-up left out, and
  reported apart), peak RSS from ``wait4``.
- ``boto3``: the plain tool, tuned the same way: a thread pool of the same size
  (``HYDRA_FETCH_CONCURRENCY``) doing ``download_file`` then ``upload_file`` for
  every object. No hashing, no database, no topics.

Every run is checked: the store holds every object with the source's bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.runs import ROOT, clean_env, wait_with_peak_rss
from tests.s3fixtures import MotoServer, s3_client

CONCURRENCY = 4
SCENARIOS = {"small": (2000, 4 << 10), "large": (20, 50 << 20)}


def fill_source(client: Any, bucket: str, count: int, size: int) -> dict[str, str]:
    """``count`` objects of ``size`` bytes (distinct contents); key -> sha256."""
    client.create_bucket(Bucket=bucket)
    block = os.urandom(size)

    def put(number: int) -> tuple[str, str]:
        body = number.to_bytes(8, "big") + block[8:]
        key = f"data/part-{number // 100:03d}/file-{number:05d}.bin"
        client.put_object(Bucket=bucket, Key=key, Body=body)
        return key, hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(put, range(count)))


def run_hydra(endpoint: str, bucket: str, workdir: Path) -> dict[str, Any]:
    workdir = workdir / bucket  # its own state database and topics
    workdir.mkdir()
    client = s3_client(endpoint)
    store = f"hydra-{bucket}"
    client.create_bucket(Bucket=store)
    task = {
        "job_id": "bench_job", "channel_id": "bench", "source_type": "s3",
        "config": {"bucket": bucket, "remote_path": "/data/", "file_pattern": "*.bin",
                   "access_key": "testing", "secret_access_key": "testing",
                   "endpoint_url": endpoint},
    }  # fmt: skip
    task_path = workdir / "task.json"
    task_path.write_text(json.dumps(task))
    env = clean_env()
    env.update(
        HYDRA_DB_URL=f"sqlite:///{workdir}/state.db",
        HYDRA_STORE_URI=f"s3://{store}/out",
        HYDRA_S3_ENDPOINT_URL=endpoint,
        HYDRA_TOPICS_PATH=str(workdir / "topics"),
        HYDRA_FETCH_CONCURRENCY=str(CONCURRENCY),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    command = [sys.executable, "-m", "scrapy", "crawl", "s3", "-a", f"task=@{task_path}"]
    started = time.monotonic()
    with (workdir / "hydra.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        status, rss = wait_with_peak_rss(process)
    wall = time.monotonic() - started
    lines = (workdir / "topics" / "hydra_status.jsonl").read_text().splitlines()
    message = json.loads(lines[-1])["message"]
    return {
        "ok": status == 0 and message["status"] == "success",
        "seconds": float(message["metadata"]["execution_time_seconds"]),
        "wall": wall,
        "rss_mib": rss,
        "store": (store, "out/bench/bench_job/"),
    }


def run_boto3(endpoint: str, bucket: str, keys: list[str], workdir: Path) -> dict[str, Any]:
    client = s3_client(endpoint)
    store = f"boto3-{bucket}"
    client.create_bucket(Bucket=store)

    def copy(key: str) -> None:
        local = workdir / hashlib.sha1(key.encode()).hexdigest()
        client.download_file(bucket, key, str(local))
        client.upload_file(str(local), store, "out/" + key.removeprefix("data/"))
        local.unlink()

    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(copy, keys))
    return {"ok": True, "seconds": time.monotonic() - started, "store": (store, "out/")}


def verify(endpoint: str, expected: dict[str, str], store: tuple[str, str]) -> bool:
    client = s3_client(endpoint)
    bucket, prefix = store
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += len(page.get("Contents", []))
    sample = sorted(expected)[:: max(1, len(expected) // 10)]
    for key in sample:
        body = client.get_object(Bucket=bucket, Key=prefix + key.removeprefix("data/"))["Body"]
        if hashlib.sha256(body.read()).hexdigest() != expected[key]:
            return False
    return found == len(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="hydra-s3-bench-") as temp:
        workdir = Path(temp)
        server = MotoServer(workdir / "moto.log").start()
        try:
            for name in args.scenario or list(SCENARIOS):
                count, size = SCENARIOS[name]
                bucket = f"source-{name}"
                expected = fill_source(s3_client(server.endpoint_url), bucket, count, size)
                megabytes = count * size / (1 << 20)
                hydra = run_hydra(server.endpoint_url, bucket, workdir)
                plain = run_boto3(server.endpoint_url, bucket, sorted(expected), workdir)
                ok = (
                    hydra["ok"]
                    and verify(server.endpoint_url, expected, hydra["store"])
                    and verify(server.endpoint_url, expected, plain["store"])
                )
                failed |= not ok
                ratio = plain["seconds"] / hydra["seconds"]
                h, p = hydra["seconds"], plain["seconds"]
                print(
                    f"{name}: {count} files, {megabytes:.0f} MiB | "
                    f"hydra {count / h:.1f} files/s {megabytes / h:.1f} MiB/s "
                    f"(job {h:.1f} s, process {hydra['wall']:.1f} s, "
                    f"peak RSS {hydra['rss_mib']:.0f} MiB) | "
                    f"boto3 {count / p:.1f} files/s {megabytes / p:.1f} MiB/s | "
                    f"ratio {ratio:.2f} | {'ok' if ok else 'FAILED'}",
                    flush=True,
                )
        finally:
            server.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
