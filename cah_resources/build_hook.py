"""Hatch build hook (pyproject.toml): compile the hot modules' twins with Cython (see cah_resources/compiled.py).

A failed compile never fails the install: the package then runs its pure-Python code, a little
slower, and says so. Editable installs (``uv sync``) build the twins in place; wheels carry them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompiledTwins(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or os.environ.get("CAH_PURE_PYTHON"):
            return
        # compiled.py is loaded on its own: importing the package would need its dependencies.
        path = Path(self.root, "cah_resources", "compiled.py")
        spec = importlib.util.spec_from_file_location("cah_build_compiled", path)
        compiled = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compiled)
        try:
            built = compiled.build()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure leaves the Python code running
            self.app.display_warning(f"cah: compiled twins not built, the pure-Python code will run "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return
        if version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            for binary in built:
                for file in (binary, binary.with_name(binary.name + ".sha256")):
                    build_data["force_include"][str(file)] = f"cah_resources/_compiled/{file.name}"
