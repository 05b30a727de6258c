"""Quiet by default: a person sees one line per stage and the result; Ray's, Ray Data's,
Train's and Tune's output (Python or C++, driver or forwarded from workers) goes to
``<run>/logs/pafo.log``; ``-v`` shows it too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_overrides

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, sys
from pafo_ray import console
with console.quiet(sys.argv[1], verbose=sys.argv[2] == "1"):
    os.write(2, b"noise on fd 2 (C++ or a forwarded worker line)\\n")
    print("noise from print")
    console.say("[stage] one line for the person")
print("after")
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_sends_descriptors_to_the_log_and_says_lines_to_the_person(tmp_path, verbose):
    log = tmp_path / "logs" / "pafo.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    logged = log.read_text()
    assert "noise on fd 2" in logged and "noise from print" in logged
    assert "[stage] one line for the person" in logged
    shown = done.stdout + done.stderr
    assert "[stage] one line for the person" in done.stdout and "after" in done.stdout
    assert ("noise on fd 2" in shown) is verbose and ("noise from print" in shown) is verbose


@pytest.mark.slow
def test_a_small_pipeline_through_the_cli_prints_few_lines(tmp_path):
    overrides = small_overrides(tmp_path, **{"run.ray.num_cpus": 4})
    done = subprocess.run([sys.executable, "-m", "pafo_ray.cli", "run", *overrides],
                          capture_output=True, text=True, env=_env(), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 20, "\n".join(lines)
    assert lines[-1].startswith("report: ") and lines[-1].endswith("report.md")
    assert any(line.strip().startswith("pafo: accuracy") for line in lines)
    log = (tmp_path / "runs" / "t" / "logs" / "pafo.log").read_text()
    assert "Started a local Ray instance" in log  # Ray's own lines
    assert "[teachers]" in log and "[evaluate]" in log


def test_headline_lists_the_lowest_group_first_also_from_a_summary_read_back():
    """A skipped evaluate prints its summary as read back from JSON (keys sorted there): the
    lines must read as the run's own, minority first."""
    import json

    from pafo_ray.console import headline_lines

    head = {"vanilla": {"overall": 0.7, "gap": 0.2,
                        "by_group": {"minority": 0.54, "majority": 0.74},
                        "by_user_type": {"minority": {"value": 0.45}, "majority": 0.77}}}
    read_back = json.loads(json.dumps({"headline": head}, sort_keys=True))
    assert list(read_back["headline"]["vanilla"]["by_group"]) == ["majority", "minority"]
    expected = ("vanilla: accuracy 0.700 | groups: minority 0.540, majority 0.740 (gap 0.200) "
                "| user types: minority 0.450, majority 0.770")
    assert [line.strip() for line in headline_lines(read_back)] == [expected]
    buckets = {"vanilla": {"overall": 0.7, "by_group": {"bucket_2": 0.8, "bucket_0": 0.6,
                                                         "bucket_1": 0.7}}}
    assert "groups: bucket_0 0.600, bucket_1 0.700, bucket_2 0.800" in headline_lines(
        {"headline": buckets})[0]
