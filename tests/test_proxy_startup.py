"""``tlsearch storage-proxy`` needs only the storage: it must start without importing torch (the
proxy is restarted when it fails, and workers wait for it meanwhile)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (tlsearch[grpc])")


def test_the_storage_proxy_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import tlsearch.cli.proxy, tlsearch.search.storage, tlsearch.search.grpc_storage\n"
        "from tlsearch.search.storage import serve_grpc_proxy\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the proxy's modules import {done.stdout.strip()}"


def test_the_search_package_still_offers_its_names_lazily() -> None:
    import tlsearch.search as search

    assert search.run_study.__module__ == "tlsearch.search.study"
    assert search.Objective.__name__ == "Objective" and search.study.__name__ == "tlsearch.search.study"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        search.nope  # noqa: B018
