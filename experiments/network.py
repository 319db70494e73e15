"""Whether a host can be reached, asked within a bound: a service that is down or a machine
without a network must cost a second, not the minutes of a library's retries."""

from __future__ import annotations

import socket
import threading
import urllib.parse

PROBE_SECONDS = 1.0


def connects(host: str, port: int, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    The attempt runs in a daemon thread because name resolution (``getaddrinfo``) takes no
    timeout of its own and can hang far longer than the connection would.
    """
    opened, done = threading.Event(), threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.set()
        except OSError:
            pass
        finally:
            done.set()

    threading.Thread(target=attempt, name="probe", daemon=True).start()
    done.wait(timeout)
    return opened.is_set()


def host_and_port(url: str) -> tuple[str, int]:
    """The host and port of ``url`` (the scheme's default port when it names none)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
