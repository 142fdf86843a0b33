"""environment.yml (conda users) must list the same packages and lower bounds as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names of PyPI packages where they differ
CONDA_NAME = {"torch": "pytorch", "blosc2": "python-blosc2", "types-pyyaml": "types-pyyaml"}
# installed by pip with --no-deps (see scripts/bootstrap.py and the comment in environment.yml)
PIP_NO_DEPS = {"dynamic-network-architectures"}


def _split(req: str) -> tuple[str, str]:
    name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
    return name, req[len(name) :].strip()


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("gui", "dev"):
        reqs += project["optional-dependencies"][extra]
    return dict(_split(r) for r in reqs)


def _environment() -> tuple[dict[str, str], dict[str, str], str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update(_split(r) for r in dep["pip"])
        else:
            conda.update([_split(dep)])
    comments = (ROOT / "environment.yml").read_text()
    return conda, pip, comments


def test_environment_matches_pyproject() -> None:
    wanted = _pyproject()
    conda, pip, text = _environment()
    problems = []
    for name, bound in wanted.items():
        if name in PIP_NO_DEPS:
            if f"{name}{bound}" not in text:
                problems.append(f"{name}{bound}: not mentioned in environment.yml's pip notes")
            continue
        conda_name = CONDA_NAME.get(name, name)
        if conda_name in conda:
            got = conda[conda_name]
        elif name in pip:
            got = pip[name]
        else:
            problems.append(f"{name}: missing from environment.yml")
            continue
        if got.replace(" ", "") != bound.replace(" ", "").replace("==", "="):
            problems.append(f"{name}: pyproject says {bound!r}, environment.yml says {got!r}")
    known = {CONDA_NAME.get(n, n) for n in wanted} | set(wanted)
    extra = sorted((set(conda) | set(pip)) - known - {"python", "pip"})
    problems += [f"{n}: in environment.yml but not in pyproject.toml" for n in extra]
    assert problems == []
