"""A throwaway PostgreSQL database per test, on the server ``TLSEARCH_TEST_POSTGRES_URL`` names
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth). Tests that need it skip,
saying why, only when no server answers; CI provides one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_ENV = "TLSEARCH_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_URL)


def _connect(url: str):  # type: ignore[no-untyped-def]
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is needed for the PostgreSQL tests")
    try:
        conn = psycopg2.connect(url, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {url} (set {POSTGRES_ENV}): {str(exc).strip()}")
    conn.autocommit = True
    return conn


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    url = server_url()
    name = f"tlsearch_test_{uuid.uuid4().hex[:12]}"
    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
