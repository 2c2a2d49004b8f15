"""Build and load the fake CUDA runtime that lets a CPU-only torch run training steps on fake CUDA tensors."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_cuda.cpp")


class ShimBuildError(RuntimeError):
    """The fake CUDA runtime could not be compiled or loaded."""


def torch_root() -> Path:
    """The installed torch package's folder, found without importing torch (the shim must load first)."""
    spec = find_spec("torch")
    if spec is None or spec.origin is None:
        raise ShimBuildError("torch is not installed")
    return Path(spec.origin).parent


def torch_version(root: Path) -> str:
    """The installed torch's version string, read from its version.py."""
    for line in (root / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise ShimBuildError(f"no __version__ in {root / 'version.py'}")


def cache_dir() -> Path:
    """Where compiled shims are kept (never in the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amused_lightning" / "memsim"


def shim_path(root: Path) -> Path:
    """The compiled library for this torch and this source: a new torch or an edited source gets a new build."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch_version(root).encode() + str(root).encode()).hexdigest()[:16]
    return cache_dir() / f"fake_cuda-{torch_version(root)}-{key}.so"


def compile_shim(root: Path, target: Path) -> None:
    """g++ the shim against the installed torch's headers and libraries."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise ShimBuildError("simulating CUDA memory needs a C++ compiler: install g++ (apt-get install -y g++) "
                             "or point CXX at one")
    include, lib = root / "include", root / "lib"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    command = [compiler, "-shared", "-fPIC", "-O1", "-std=c++20", "-w", f"-I{include}",
               f"-I{include / 'torch/csrc/api/include'}", str(SOURCE), f"-L{lib}", "-lc10", "-ltorch_cpu",
               f"-Wl,-rpath,{lib}", "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ShimBuildError(f"compiling {SOURCE.name} failed:\n{result.stderr[-4000:]}")
    partial.replace(target)  # atomic: a concurrent process never loads a half-written library


def load_fake_cuda() -> None:
    """Compile (once per torch version) and load the fake CUDA runtime; must run before torch is imported."""
    root = torch_root()
    target = shim_path(root)
    if not target.exists():
        compile_shim(root, target)
    ctypes.CDLL(str(target), mode=ctypes.RTLD_GLOBAL)
    load_fake_cuda.loaded = True
