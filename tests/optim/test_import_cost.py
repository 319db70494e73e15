"""What ``import optim`` costs every process: torch and the library, not the modules that only
some runs use, which are imported where they are used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Measured idle on 2 cores beyond `import torch`: torch.distributed.tensor 0.6 s (FSDP2's
# DTensors: optim/_sharding.py looks the module up), triton 0.13 s (the fused step's CUDA kernel).
USED_BY_SOME_RUNS = ["torch.distributed.tensor", "triton"]

PROBE = """
import json, sys
import torch
by_torch = [name for name in {names!r} if name in sys.modules]
import optim
by_optim = [name for name in {names!r} if name in sys.modules and name not in by_torch]
print(json.dumps({{"file": optim.__file__, "by_torch": by_torch, "by_optim": by_optim}}))
"""


def test_import_optim_leaves_out_what_only_some_runs_use():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(names=USED_BY_SOME_RUNS)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    imported = json.loads(probe.stdout.splitlines()[-1])
    assert Path(imported["file"]).resolve() == ROOT / "optim" / "__init__.py"
    assert imported["by_optim"] == [], f"import optim imports {imported['by_optim']}"
