"""Whether the Hugging Face hub can be reached, decided once per process and within a second.

Without a network, ``transformers`` and ``datasets`` retry the hub five times with growing waits
(25-55 s) before they fail. The harness asks once instead: offline mode (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set to 1) means no; otherwise a TCP connection
to the hub's host (``HF_ENDPOINT``, or the HTTPS proxy in use) must open within
:data:`PROBE_SECONDS`. When the answer is no, models, tokenizers and datasets are read from the
local cache only, and a missing one fails at once with a message that says how to provide it.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
import urllib.request
from pathlib import Path

from huggingface_hub import constants

from .network import PROBE_SECONDS, connects

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_variable() -> str | None:
    """The offline-mode variable that is set, if any (read now, not at import)."""
    return next((name for name in OFFLINE_VARIABLES if os.environ.get(name, "").upper() in _TRUE), None)


def hub_address() -> tuple[str, int]:
    """The host and port a connection to the hub opens first: the proxy for the endpoint's scheme
    when one is configured and the endpoint's host is not exempt from it, else the endpoint."""
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    use_proxy = proxy is not None and not urllib.request.proxy_bypass(endpoint.hostname or "")
    target = urllib.parse.urlsplit(proxy) if use_proxy else endpoint
    default_port = 443 if target.scheme == "https" else 80
    return target.hostname or "", target.port or default_port


@functools.cache
def hub_reachable() -> bool:
    """True when the hub can be asked: not in offline mode and :func:`hub_address` accepts a
    connection within :data:`PROBE_SECONDS`. Cached: one probe per process."""
    if offline_variable() is not None:
        return False
    return connects(*hub_address(), timeout=PROBE_SECONDS)


def local_files_only(name: str) -> bool:
    """The ``local_files_only`` to pass to ``from_pretrained(name)``: True for a local directory
    (nothing to fetch, no probe needed) and when the hub cannot be reached."""
    return Path(name).is_dir() or not hub_reachable()


def why_unreachable() -> str:
    """Why :func:`hub_reachable` said no, for messages."""
    variable = offline_variable()
    if variable is not None:
        return f"{variable}={os.environ[variable]} is set (offline mode)"
    host, port = hub_address()
    return f"no connection to {host}:{port} within {PROBE_SECONDS:g} s"


def cache_dir() -> str:
    """Where the Hugging Face libraries keep downloaded models and tokenizers."""
    return constants.HF_HUB_CACHE
