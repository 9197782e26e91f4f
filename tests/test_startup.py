"""What loading the project costs: Dagster's code server and every run import the definitions."""

from __future__ import annotations

import json
import subprocess
import sys

# Modules that only the workers that score (torch, the models) or draw plots (matplotlib) need.
# Imported with the definitions they cost every code-server start and every run ~4 CPU seconds.
WORKER_ONLY = ("torch", "torchvision", "open_clip", "transformers", "matplotlib")


def test_loading_the_definitions_imports_no_model_or_plotting_library() -> None:
    probe = (
        "import json, sys; import cah_assets.definitions; "
        f"print(json.dumps(sorted(m for m in {WORKER_ONLY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
