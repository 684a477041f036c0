"""A throw-away PostgreSQL database for a benchmark run (the benchmarks import it as a sibling
module: they run as ``python benchmarks/bench_….py``, so this folder is first on ``sys.path``)."""

from __future__ import annotations

import uuid


def create_database(server: str, prefix: str = "tlsearch_bench") -> str:
    """Create ``<prefix>_<random>`` on the server that the URL ``server`` names; its URL."""
    import psycopg2

    conn = psycopg2.connect(server, connect_timeout=3)
    conn.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return server.rpartition("/")[0] + "/" + name


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, whoever is still connected to it."""
    import psycopg2

    server, _, name = url.rpartition("/")
    conn = psycopg2.connect(server + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()
