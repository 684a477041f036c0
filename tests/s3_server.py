"""A local S3-compatible server for the artefact-store tests: moto's server mode (``moto[s3,server]``,
from PyPI) on 127.0.0.1, a free port, with fake credentials. It stands in for Amazon S3 (or MinIO,
Ceph …): tlsearch talks to it through boto3 exactly as to the real thing, only the endpoint differs
(``AWS_ENDPOINT_URL_S3``, which boto3 reads from the environment, as subprocesses inherit it).

Its fixtures, ``s3_server`` and ``s3_bucket``, are registered by ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATLSEARCHTESTKEY",
    "AWS_SECRET_ACCESS_KEY": "tlsearch-fake-secret-key-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookup on a machine that is not in AWS
    "AWS_CONFIG_FILE": "/nonexistent/tlsearch-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/tlsearch-test-aws-credentials",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server running for the whole session."""
    pytest.importorskip("boto3", reason="boto3 is needed for the S3 tests (pip install 'tlsearch[s3]')")
    server_mod = pytest.importorskip("moto.server", reason="moto[s3,server] is needed for the S3 tests")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one INFO line per request in a failure
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Bucket:
    """A fresh bucket on the server: ``url`` (``s3://<bucket>``) and a boto3 ``client`` for checks."""

    name: str
    url: str
    endpoint: str
    client: Any

    def listed(self, prefix: str = "") -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for o in found.get("Contents", []))


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket, with the fake credentials and the server's endpoint in the environment."""
    import boto3

    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    name = f"tlsearch-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    return Bucket(name=name, url=f"s3://{name}", endpoint=s3_server, client=client)
