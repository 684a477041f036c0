"""``weights: hub`` checked once, before the first trial: in the local cache, or the hub reachable.

Without this, a study whose backbone downloads its weights on a machine without network spent
~50 s of retries in each trial (for up to 10 trials) before the policy stopped it. Now the
backbones' ``check_space`` asks :func:`check_hub_weights`: every model whose pretrained weights
are not in the local cache (Hugging Face's, ``HF_HOME``; torch hub's, ``TORCH_HOME``) needs its
host to answer an HTTPS request within :data:`PROBE_TIMEOUT` seconds, tried once per host; else
the study stops before any work (exit 2) with the way out (a local file, or ``weights: random``).
``HF_HUB_OFFLINE=1`` counts as the Hugging Face hub being unreachable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from tlsearch.errors import PluginError

HF_HOST = "huggingface.co"
PROBE_TIMEOUT = 5.0  # seconds: a hub that answers at all answers a HEAD request well within this


def hub_reachable(host: str, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``https://host/`` answers an HTTP request within ``timeout`` seconds (any status
    counts: the server is there). Not a bare TCP connection: a filtering proxy accepts those for
    any address and then answers nothing useful."""
    if host == HF_HOST and os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return False
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(
            urllib.request.Request(f"https://{host}/", method="HEAD"), timeout=timeout
        ).close()
    except urllib.error.HTTPError:
        return True  # an answer, if not a welcome one
    except (OSError, ValueError):  # no name, no route, a timeout, a certificate for another host
        return False
    return True


def _torch_hub_cached(url: str) -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def timm_hub_sources(model_names: Iterable[str]) -> dict[str, tuple[str, bool]]:
    """Model name → (the host its pretrained weights come from, whether they are cached here)."""
    from timm.models import get_pretrained_cfg

    out: dict[str, tuple[str, bool]] = {}
    for name in model_names:
        cfg = get_pretrained_cfg(name, allow_unregistered=True)
        if cfg is None:
            continue  # timm itself says the model has no pretrained weights when the trial builds it
        hf_hub_id, url = cfg.hf_hub_id, cfg.url
        if hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            repo = hf_hub_id.split("@")[0]
            cached = any(
                isinstance(try_to_load_from_cache(repo, f), str)
                for f in (cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin")
            )
            out[name] = (HF_HOST, cached)
        elif url:
            out[name] = (urlparse(url).hostname or url, _torch_hub_cached(url))
    return out


def url_hub_sources(urls: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
    """Model name → (host, cached) for weights downloaded from a URL into torch hub's cache."""
    return {name: (urlparse(url).hostname or url, _torch_hub_cached(url)) for name, url in urls.items()}


def check_hub_weights(
    sources: Mapping[str, tuple[str, bool]],
    *,
    probe: Callable[[str], bool] | None = None,
) -> None:
    """Raise :class:`PluginError` when a model's hub weights are not cached and their host does
    not answer (each host probed once)."""
    probe = probe or hub_reachable
    missing = {name: host for name, (host, cached) in sources.items() if not cached}
    down = {host for host in sorted(set(missing.values())) if not probe(host)}
    unreachable = sorted(name for name, host in missing.items() if host in down)
    if unreachable:
        raise PluginError(
            f"weights: hub for {', '.join(map(repr, unreachable))}: not in the local cache and "
            f"{', '.join(sorted(down))} cannot be reached (checked once, before any trial). Offline? "
            "Give a local file with `weights: /path/to/weights.safetensors` (or .pth), "
            "or `weights: random` to train from scratch on purpose."
        )
