"""The CLI makes OpenMP wait passively, set before anything loads torch (libgomp reads it once)."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os, sys
seen = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Watch())
import toolkit.cli
import torch  # in case no command module loaded it yet
print(seen["torch"])
"""


def test_cli_sets_passive_wait_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "PASSIVE"


def test_cli_keeps_a_users_wait_policy() -> None:
    env = dict(os.environ, OMP_WAIT_POLICY="ACTIVE")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ACTIVE"
