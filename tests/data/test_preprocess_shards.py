"""Sharded preprocessing: N processes fill one cache, byte-identical to one run; merge; SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.test_preprocess import _write_dataset
from toolkit.cli import app
from toolkit.data.cache import open_cache
from toolkit.data.preprocess import PLAN_FILE, preprocess_manifest
from toolkit.data.preprocess.shards import (
    SHARDS_DIR,
    merge_shards,
    parse_shard,
    preprocess_shard,
    shard_of,
    slurm_parameters,
    submit_shards,
)
from toolkit.errors import ConfigError, DataError, ToolkitError

REPO = Path(__file__).resolve().parents[2]


def _cache_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of everything that makes the cache (bookkeeping dot files aside)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = path.read_bytes()
    return out


def test_three_shard_processes_give_the_unsharded_cache_byte_for_byte(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=7)
    ids = [f"case-{i}" for i in range(7)]
    assert sorted({shard_of(c, 3) for c in ids}) == [0, 1, 2]  # every shard has work

    single = tmp_path / "single"
    preprocess_manifest(manifest, single, target_spacing_mm=(1, 1, 1), workers=1, progress=False)

    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "toolkit.cli",
                "preprocess",
                str(manifest),
                "--out",
                str(sharded),
                "--shard",
                f"{i}/3",
                "--workers",
                "1",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    # exactly one shard wrote the plan (the others waited or found it written)
    assert sum("plan.json written" in o and "another" not in o for o in outputs) == 1, outputs

    a, b = _cache_files(single), _cache_files(sharded)
    assert PLAN_FILE in a and sum(k.endswith("done.json") for k in a) == 7
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k] != b[k]]
    assert not different, different
    assert not list((sharded / "cases").glob(".tmp-*"))
    assert len(open_cache(sharded)) == 7


def test_the_last_shard_writes_the_plan_and_merge_checks_every_entry(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=6)
    out = tmp_path / "cache"
    owners = {f"case-{i}": shard_of(f"case-{i}", 2) for i in range(6)}
    assert sorted(set(owners.values())) == [0, 1]
    first = preprocess_shard(manifest, out, (0, 2), workers=1, progress=False)
    assert first.plan is None and first.waiting_for == (1,)
    assert first.num_cases == sum(v == 0 for v in owners.values())
    assert not (out / PLAN_FILE).exists()
    with pytest.raises(DataError, match="did not finish"):
        open_cache(out)
    missing = [c for c, s in owners.items() if s == 1]
    with pytest.raises(DataError, match=f"{len(missing)} of 6 cases are not finished") as err:
        merge_shards(manifest, out)
    assert all(f"case {c}: not finished" in str(err.value) for c in missing)

    second = preprocess_shard(manifest, out, (1, 2), workers=1, progress=False)
    assert second.plan is not None and second.waiting_for == ()
    written = (out / PLAN_FILE).read_bytes()
    assert [c["id"] for c in json.loads(written)["cases"]] == list(owners)

    # a shard rerun with other settings invalidates the others' markers: no plan from mixed runs
    coarse = preprocess_shard(manifest, out, (0, 2), target_spacing_mm=(2, 2, 2), progress=False)
    assert coarse.plan is None and coarse.waiting_for == (1,)
    assert not (out / PLAN_FILE).exists()
    with pytest.raises(DataError, match="case-.: made with other settings"):
        merge_shards(manifest, out)  # shard 0's entries are 2 mm now
    last = preprocess_shard(manifest, out, (1, 2), target_spacing_mm=(2, 2, 2), progress=False)
    assert last.plan is not None and open_cache(out).plan["target_spacing_mm"] == [2.0] * 3

    # by hand from the command line: the same plan, byte for byte
    written = (out / PLAN_FILE).read_bytes()
    (out / PLAN_FILE).unlink()
    args = ["preprocess", str(manifest), "--out", str(out), "--spacing", "2"]
    result = CliRunner().invoke(app, [*args, "--merge"])
    assert result.exit_code == 0, result.output
    assert "plan.json written for 6 cases" in result.output
    assert (out / PLAN_FILE).read_bytes() == written
    result = CliRunner().invoke(app, [*args, "--merge", "--shard", "0/2"])
    assert result.exit_code != 0 and "use one of --shard, --merge" in str(result.exception)


def test_parse_shard_names_the_problem() -> None:
    assert parse_shard("2/8") == (2, 8)
    cases = [
        ("3/3", r"index 3 must be in 0\.\.2"),
        ("1", "expected I/N"),
        ("a/b", "expected I/N"),
        ("0/0", "N must be >= 1"),
        ("1/2/3", "I/N"),
    ]
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_shard(bad)


def test_slurm_parameters_render_an_sbatch_array(tmp_path: Path) -> None:
    pytest.importorskip("submitit")  # a dependency from the sweeps work (issue 12)
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(
        3, partition="cpu", cpus_per_task=8, mem_gb=24, timeout_min=90, max_parallel=2
    )
    params.pop("array_parallelism")  # submitit turns it into the %K of --array
    text = _make_sbatch_string(command="run", folder=tmp_path, map_count=3, **params)
    for line in ["--array=0-2%3", "--partition=cpu", "--cpus-per-task=8", "--mem=24GB",
                 "--time=90", "--job-name=mae3d-preprocess", "--ntasks-per-node=1"]:  # fmt: skip
        assert f"#SBATCH {line}" in text, text
    with pytest.raises(ConfigError, match="--max-parallel: must be >= 1"):
        slurm_parameters(3, max_parallel=0)
    assert slurm_parameters(3, max_parallel=10)["array_parallelism"] == 3
    if not _has_srun():  # no fake cluster: only the refusal is checked here
        with pytest.raises(ToolkitError, match="--executor slurm: .*slurm"):
            submit_shards(tmp_path / "m.yaml", tmp_path / "c", 3, executor="slurm")
    with pytest.raises(ConfigError, match="--executor"):
        submit_shards(tmp_path / "m.yaml", tmp_path / "c", 3, executor="pbs")


def _has_srun() -> bool:
    import shutil

    return shutil.which("srun") is not None


@pytest.mark.slow
def test_local_executor_runs_the_array_through_submitit(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    manifest = _write_dataset(tmp_path / "src", num_cases=4)
    out = tmp_path / "cache"
    jobs = submit_shards(manifest, out, 2, executor="local", options={"workers": 1})
    lines = [job.result() for job in jobs]
    assert sum("plan.json written" in line for line in lines) >= 1, lines
    assert len(open_cache(out)) == 4 and (out / SHARDS_DIR / "1-of-2.json").is_file()
