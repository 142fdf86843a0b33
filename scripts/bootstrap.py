"""Install the toolkit into the current environment without dragging in a second torch build.

Why: ``dynamic-network-architectures`` (nnU-Net's network library) requires ``timm``, which
requires ``torchvision``; pip then replaces a CPU or site-specific torch build with a multi-GB CUDA
wheel, and PyPI's torchvision does not import beside other torch builds. The toolkit only uses the
ResEnc U-Net from that package, which needs neither. So we install, in order:

1. torch, as given by ``TORCH_SPEC`` (default ``torch==2.13.0``; e.g. ``TORCH_SPEC="torch==2.5.1
   --index-url https://download.pytorch.org/whl/cu124"`` for a CUDA build),
2. dynamic-network-architectures without its dependencies,
3. every other dependency listed in pyproject.toml (plus the requested extras), with the installed
   torch version pinned through a constraints file so nothing can replace it,
4. the toolkit itself in editable mode, without dependencies.

pyproject.toml stays the single list of dependencies; this script only orders the installs.

Usage: ``python scripts/bootstrap.py [EXTRA ...]`` (e.g. ``gui dev``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_DEPS = {"dynamic-network-architectures"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main(extras: list[str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]

    _pip(*shlex.split(os.environ.get("TORCH_SPEC", "torch==2.13.0")))
    torch_version = subprocess.check_output(
        [sys.executable, "-c", "import torch; print(torch.__version__.split('+')[0])"], text=True
    ).strip()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(f"torch=={torch_version}\n")
        constraints = handle.name

    plain = [r for r in requirements if _name(r) != "torch" and _name(r) not in NO_DEPS]
    special = [r for r in requirements if _name(r) in NO_DEPS]
    _pip("--no-deps", *special)
    _pip("-c", constraints, *plain)
    _pip("--no-deps", "-e", str(ROOT))
    os.unlink(constraints)


if __name__ == "__main__":
    main(sys.argv[1:])
