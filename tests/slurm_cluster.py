"""The local SLURM cluster (``scripts/local_slurm.sh``) as the tests marked ``slurm`` use it.

The session fixture ``slurm_cluster`` (``tests/conftest.py``) starts it once, skips the tests with
the script's reason where it cannot start (not root, no apt, a daemon that does not come up) and
stops it at the end, unless it was running before the session (then it is left as it was).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local_slurm.sh"


@dataclass(frozen=True)
class Cluster:
    """A running cluster: the environment its clients need (``SLURM_CONF``)."""

    env: dict[str, str]

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def job_state(self, job_id: str) -> str:
        """``JobState`` of ``scontrol show job`` (slurmctld keeps ended jobs for MinJobAge, 300 s)."""
        fields = dict(item.split("=", 1) for item in self.run("scontrol", "--oneliner", "show", "job", job_id).split()
                      if "=" in item)
        return fields["JobState"]

    def queued(self) -> list[str]:
        return self.run("squeue", "--noheader", "--array", "--format", "%i").split()


def start() -> tuple[Cluster | None, str, bool]:
    """(the cluster or None, why not, whether this call started it)."""
    env = {**os.environ, "LOCAL_SLURM_DIR": os.environ.get("LOCAL_SLURM_DIR", "/tmp/salsa-local-slurm")}
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit {done.returncode}", False
    conf = done.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    return Cluster({**env, "SLURM_CONF": conf}), "", not was_up


def stop() -> None:
    env = {**os.environ, "LOCAL_SLURM_DIR": os.environ.get("LOCAL_SLURM_DIR", "/tmp/salsa-local-slurm")}
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, check=True, timeout=60)


@dataclass
class Watch:
    """What a watcher saw of one run while its job went through the queue."""

    statuses: list[str] = field(default_factory=list)  # each status of summary.json, in order
    released: int = 0  # requeue holds cut short


@contextlib.contextmanager
def watching(cluster: Cluster, run_dir: Path) -> Iterator[Watch]:
    """Within the body, note every status the record of ``run_dir`` takes, and start every
    requeued job at once: SLURM holds a requeued job for about two minutes (its BeginTime) before
    it may run again; ``scontrol update StartTime=now`` is the cluster's own way to cut that short."""
    watch, stop_event = Watch(), threading.Event()

    def look() -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            status = json.loads((run_dir / "summary.json").read_text()).get("status")
            if status and (not watch.statuses or watch.statuses[-1] != status):
                watch.statuses.append(status)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            held = cluster.run("squeue", "--noheader", "--array", "--states=PENDING", "--format", "%i %r")
            for line in held.splitlines():
                job_id, reason = line.split(maxsplit=1)
                if reason.strip() == "BeginTime":
                    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                    watch.released += 1

    def loop() -> None:
        while not stop_event.wait(0.2):
            look()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop_event.set()
        thread.join()
        look()
