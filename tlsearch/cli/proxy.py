"""``tlsearch storage-proxy``: Optuna's gRPC storage proxy in front of a study's database."""

from __future__ import annotations

import click

from tlsearch.cli import main


@main.command("storage-proxy", short_help="Serve a database to workers through a gRPC proxy.")
@click.option("--storage", required=True, help="the database the proxy serves (postgresql://user@host/db)")
@click.option("--host", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="port to listen on"
)
@click.option(
    "--pool",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="database connections the proxy holds (fixed: the database sees no more, whatever the workers)",
)
def storage_proxy(storage: str, host: str, port: int, pool: int) -> None:
    """Serve the database STORAGE to workers through Optuna's gRPC storage proxy.

    Workers then take `--storage grpc://HOST:PORT` instead of the database URL and share the
    proxy's few database connections, so a study can have hundreds of workers without hundreds of
    connections. A trial's grouped writes arrive as one call and are applied in one commit.
    Runs until stopped (Ctrl-C or SIGTERM); workers retry meanwhile for
    TLSEARCH_PROXY_RETRY_SECONDS (default 60), so a restart loses nothing; a call
    unanswered for TLSEARCH_PROXY_DEADLINE_SECONDS (default 30: a hung proxy) is
    retried the same way, and a resent write is applied once.
    """
    from tlsearch.errors import ConfigError
    from tlsearch.search.storage import redact, require_grpc, serve_grpc_proxy, storage_kind

    if storage_kind(storage) not in ("rdb", "sqlite"):
        raise ConfigError(
            f"--storage {redact(storage)!r}: the proxy serves a database (postgresql://…, mysql://…)"
        )
    require_grpc("tlsearch storage-proxy")
    click.echo(
        f"serving {redact(storage)} on grpc://{host}:{port} with {pool} database connections (Ctrl-C stops)",
        err=True,
    )
    serve_grpc_proxy(storage, host=host, port=port, pool=pool)
