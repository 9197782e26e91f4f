"""Compiled twins of hot modules: the same Python source built by Cython, used only while it matches.

The per-link loop of the candidates stage runs a few million times per WAT file. Cython compiles
its module, unchanged, with C types for its variables from the ``.pxd`` beside it (an "augmenting
.pxd"); the ``.py`` stays the only source of behaviour and runs as it is wherever no twin is built.

A twin lives in ``cah_resources/_compiled/``: ``<name><extension suffix>`` and a ``.sha256`` stamp of
the ``.py`` and ``.pxd`` it was built from. A module asks for its twin when it is imported and takes
it only if the stamp matches its source now, so an edited module is never shadowed by a stale build
(it runs as Python, with a warning, until ``python -m cah_resources.compiled`` rebuilds it).
``CAH_PURE_PYTHON=1`` turns twins off.

Built by the package build (``build_hook.py``, so ``uv sync`` and wheels have them) and by ``make setup``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

PACKAGE = "cah_resources"
PACKAGE_DIR = Path(__file__).resolve().parent
TWIN_DIR = PACKAGE_DIR / "_compiled"
COMPILED = ("image_links",)  # modules of this package that have a twin
PURE_ENV = "CAH_PURE_PYTHON"
_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's ABI, e.g. .cpython-311-x86_64-linux-gnu.so


def source_digest(name: str, package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 of the ``.py`` and ``.pxd`` of module ``name``: what a twin must have been built from."""
    digest = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        path = package_dir / f"{name}{suffix}"
        digest.update(suffix.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return digest.hexdigest()


def twin_paths(name: str, twin_dir: Path = TWIN_DIR) -> tuple[Path, Path]:
    """The twin's extension file for this interpreter and its stamp."""
    binary = twin_dir / f"{name}{_SUFFIX}"
    return binary, binary.with_name(binary.name + ".sha256")


def is_current(name: str, twin_dir: Path = TWIN_DIR, package_dir: Path = PACKAGE_DIR) -> bool:
    binary, stamp = twin_paths(name, twin_dir)
    return binary.exists() and stamp.exists() and stamp.read_text().strip() == source_digest(name, package_dir)


def twin(module_name: str, twin_dir: Path = TWIN_DIR) -> ModuleType | None:
    """The compiled twin of ``cah_resources.<name>``, or None: twins off, none built, or built from
    other source (warned: the module then runs as Python)."""
    package, _, name = module_name.rpartition(".")
    if package != PACKAGE or name not in COMPILED or os.environ.get(PURE_ENV):
        return None  # the twin itself, a copy loaded by pure(), or twins turned off
    binary, _ = twin_paths(name, twin_dir)
    if not binary.exists():
        log.info("no compiled twin of %s is built: running it as Python", module_name)
        return None
    if not is_current(name, twin_dir):
        log.warning("%s/%s.py differs from the source its compiled twin was built from: running it as Python "
                    "(rebuild with: python -m cah_resources.compiled, or uv sync)", PACKAGE, name)
        return None
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}._compiled.{name}", binary)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # built for another platform or a broken file: the Python code still runs
        log.warning("compiled twin of %s not loaded (%s): running it as Python", module_name, exc)
        return None
    sys.modules[spec.name] = module
    return module


def pure(name: str) -> ModuleType:
    """A fresh copy of ``cah_resources.<name>`` run from its ``.py``, never its twin (tests compare the two)."""
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}._pure.{name}", PACKAGE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def build(names: tuple[str, ...] = COMPILED, twin_dir: Path = TWIN_DIR, force: bool = False) -> list[Path]:
    """Compile the twins that are missing or stale; return every twin's extension file.

    Needs Cython and a C compiler (the same one gcld3 builds with). A twin is written whole: the
    extension first, then its stamp, each by rename, so an interrupted build leaves no twin in use.
    """
    from Cython.Build import cythonize  # build-time only: Cython is not needed to run
    from setuptools import Distribution, Extension

    twin_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for name in names:
        binary, stamp = twin_paths(name, twin_dir)
        digest = source_digest(name)
        if force or not is_current(name, twin_dir):
            with tempfile.TemporaryDirectory(prefix="cah-twin-") as tmp:
                extension = Extension(f"{PACKAGE}.{name}", [str(PACKAGE_DIR / f"{name}.py")])
                modules = cythonize([extension], build_dir=tmp, quiet=True, force=True,
                                    compiler_directives={"language_level": 3})
                command = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
                command.build_lib = command.build_temp = tmp
                command.ensure_finalized()
                command.run()
                shutil.copyfile(command.get_ext_fullpath(extension.name), f"{binary}.tmp")
            os.replace(f"{binary}.tmp", binary)
            Path(f"{stamp}.tmp").write_text(digest + "\n")
            os.replace(f"{stamp}.tmp", stamp)
            print(f"compiled twin of {PACKAGE}/{name}.py: {binary}")
        built.append(binary)
    return built


def main() -> None:
    try:
        build(force="--force" in sys.argv[1:])
    except Exception as exc:  # noqa: BLE001 - one line for the user, whatever the toolchain said
        sys.exit(f"compiled twins not built: {type(exc).__name__}: {exc}".splitlines()[0])


if __name__ == "__main__":
    main()
