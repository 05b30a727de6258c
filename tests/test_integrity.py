"""DESIGN §9's guarantees of the run directory, each tested: containment, one writer (a lock
held by real processes), outputs that follow inputs, no secrets at rest, and nothing
executable from storage. The unit tests run without Ray; the stage tests use the session's
local Ray and a tiny parquet input."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import small_overrides

from pafo_ray.config import ConfigError, load_config
from pafo_ray.storage import RunDir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("pafo-ray")


# ---------------------------------------------------------------- containment


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", "a/b", "..", ".", "", "a\\b",
                                  ".hidden"])
def test_run_name_must_be_a_name(name):
    with pytest.raises(ConfigError, match=r"run\.run_name"):
        load_config(None, [f"run.run_name={name!r}" if name else "run.run_name=''"])


def test_cli_rejects_a_traversal_run_name_and_the_planted_file_survives(tmp_path, capsys):
    from pafo_ray.cli import main

    planted = tmp_path / "victim" / "prepare" / "keep.txt"
    planted.parent.mkdir(parents=True)
    planted.write_text("mine")
    args = [f"run.storage_path={tmp_path / 'runs'}", "run.run_name=../victim"]
    assert main(["show-config", *args]) == 2
    assert "run.run_name" in capsys.readouterr().err
    assert main(["prepare", *args]) == 2  # refused before any Ray starts or anything is cleared
    assert planted.read_text() == "mine"


def test_rundir_deletes_nothing_outside_the_run(tmp_path):
    from pafo_ray.storage import ContainmentError

    planted = tmp_path / "victim" / "prepare" / "keep.txt"
    planted.parent.mkdir(parents=True)
    planted.write_text("mine")
    with pytest.raises(ContainmentError):
        RunDir(str(tmp_path / "runs"), "../victim")
    run_dir = RunDir(str(tmp_path / "runs"), "t")
    for parts in [("..", "..", "victim", "prepare"), ("..",), ()]:
        with pytest.raises(ContainmentError):
            run_dir.remove(*parts)
    with pytest.raises(ContainmentError):
        run_dir.start("../../victim/prepare")
    # A stage folder that is a symlink out of the run is not followed either.
    os.makedirs(run_dir.local_dir())
    os.symlink(tmp_path / "victim" / "prepare", run_dir.local_dir("prepare"))
    with pytest.raises(ContainmentError):
        run_dir.start("prepare")
    assert planted.read_text() == "mine"
    run_dir.write_json({"a": 1}, "inside", "x.json")
    run_dir.start("inside")  # inside the run: cleared as before
    assert not run_dir.exists("inside", "x.json")


# ---------------------------------------------------------------- redaction


def test_redact_uri_strips_credentials_and_secret_parameters():
    from pafo_ray.redact import redact_text, redact_tree, redact_uri

    uri = ("s3://AKIA:SEKRET1@bucket/p/x.parquet?endpoint_override=127.0.0.1:9000&scheme=http"
           "&secret_key=SEKRET2&access_key=AKIA2&session_token=SEKRET3&region=eu-west-1"
           "&X-Amz-Signature=SEKRET4&password=SEKRET5")
    clean = redact_uri(uri)
    assert clean == ("s3://bucket/p/x.parquet?endpoint_override=127.0.0.1:9000&scheme=http"
                     "&region=eu-west-1")
    assert redact_uri("gs://b/p?token=SEKRET") == "gs://b/p"
    assert redact_uri("/local/path/x.parquet") == "/local/path/x.parquet"
    text = f"cannot read '{uri}': gone; also https://u:SEKRET6@host/a?api_key=SEKRET7"
    assert "SEKRET" not in redact_text(text) and "s3://bucket/p/x.parquet" in redact_text(text)
    tree = redact_tree({"path": uri, "jobs": [{"model": uri}], "n": 3})
    assert "SEKRET" not in json.dumps(tree) and tree["n"] == 3


def test_a_recorded_uri_resolves_back_under_the_run():
    from pafo_ray.redact import redact_uri

    run_dir = RunDir("s3://AK:SK@b/p?endpoint_override=127.0.0.1:9&scheme=http", "r")
    real = run_dir.uri("tune", "baselines", "reweight")
    recorded = redact_uri(real)
    assert "SK" not in recorded and run_dir.resolve(recorded) == real
    assert run_dir.resolve("s3://elsewhere/x") == "s3://elsewhere/x"


def test_log_lines_are_redacted(caplog):
    import logging

    from pafo_ray.redact import RedactingFilter

    logger = logging.getLogger("pafo_ray.test_redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("reading %s", "s3://k:SEKRET@b/x?scheme=http")
    assert "SEKRET" not in caplog.text and "s3://b/x?scheme=http" in caplog.text


# ---------------------------------------------------------------- the lock (unit)


def _holder(path: Path, **fields) -> None:
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now - 100,
              "renewed_at": now, "token": "theirs", "command": "pafo-ray run", **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))


def test_a_live_lock_is_refused_naming_the_holder(tmp_path):
    from pafo_ray.runlock import LOCK_NAME, RunLock, RunLocked

    run_dir = RunDir(str(tmp_path), "r")
    with RunLock(run_dir, lease_s=30):
        began = time.time()
        with pytest.raises(RunLocked) as caught:
            RunLock(run_dir, lease_s=30).acquire()
        assert time.time() - began < 2
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", message)
        with pytest.raises(RunLocked, match="waited 1 s"):
            RunLock(run_dir, lease_s=30, wait_s=1).acquire()
    assert not (tmp_path / "r" / LOCK_NAME).exists()  # released


def test_the_lock_is_released_on_an_exception_and_renewed_while_held(tmp_path):
    from pafo_ray.runlock import LOCK_NAME, RunLock

    run_dir = RunDir(str(tmp_path), "r")
    lock_file = tmp_path / "r" / LOCK_NAME
    with pytest.raises(KeyError):
        with RunLock(run_dir, lease_s=0.4):
            first = json.loads(lock_file.read_text())["renewed_at"]
            time.sleep(0.5)
            assert json.loads(lock_file.read_text())["renewed_at"] > first
            raise KeyError("boom")
    assert not lock_file.exists()


def test_a_dead_holder_is_taken_over(tmp_path, capsys):
    from pafo_ray.runlock import LOCK_NAME, RunLock, RunLocked

    run_dir = RunDir(str(tmp_path), "r")
    lock_file = tmp_path / "r" / LOCK_NAME
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _holder(lock_file, pid=int(gone))  # this host, a pid that has exited
    with RunLock(run_dir, lease_s=30) as lock:
        assert json.loads(lock_file.read_text())["token"] == lock.token
    assert f"pid {gone} no longer runs on this host" in capsys.readouterr().out
    _holder(lock_file, host="another-host", renewed_at=time.time() - 100)  # lease expired
    with RunLock(run_dir, lease_s=30) as lock:
        assert json.loads(lock_file.read_text())["token"] == lock.token
    assert "lease expired" in capsys.readouterr().out
    _holder(lock_file, host="another-host")  # alive elsewhere: not ours to take
    with pytest.raises(RunLocked, match="another-host"):
        RunLock(run_dir, lease_s=30).acquire()


# ---------------------------------------------------------------- tensors only


def test_a_pickled_object_in_train_state_is_refused(tmp_path):
    import torch

    from pafo_ray.train.ray_train import load_train_state

    planted = tmp_path / "PLANTED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    torch.save({"epoch": 1, "optimizer": Payload()}, tmp_path / "train_state.pt")
    with pytest.raises(RuntimeError, match="refused"):
        load_train_state(str(tmp_path / "train_state.pt"))
    assert not planted.exists()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 2, "optimizer": optimizer.state_dict(), "objective": {"q": [0.5]}},
               tmp_path / "good.pt")
    assert load_train_state(str(tmp_path / "good.pt"))["epoch"] == 2


def test_every_torch_load_is_weights_only():
    calls = []
    for folder in ("pafo_ray", "tuning"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            calls += [(path.name, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls, "no torch.load found: this test lost its subject"
    for name, call in calls:
        assert "weights_only=True" in call, (name, call)


# ---------------------------------------------------------------- stages on a tiny input


def _write_input(folder: Path, num_users: int, num_prompts: int) -> Path:
    from pafo_ray.config import GeneratorConfig
    from pafo_ray.data.generate import write_generated

    files = write_generated(GeneratorConfig(num_users=num_users, num_prompts=num_prompts,
                                            raters_train=3, raters_eval=5), str(folder))
    return Path(files[0])


def _prepared_rows(run_dir: RunDir) -> int:
    return pads.dataset(run_dir.uri("prepare", "data"), format="parquet",
                        partitioning="hive").count_rows()


@pytest.fixture
def parquet_input(tmp_path):
    path = _write_input(tmp_path / "input", 60, 40)
    args = small_overrides(tmp_path, **{"data.source": "parquet", "data.path": str(path),
                                        "prepare.num_partitions": 2})
    return path, args


@pytest.mark.ray
def test_a_rewritten_input_reruns_prepare_and_its_counts_follow(ray_session, parquet_input,
                                                                 capsys):
    from pafo_ray.stages.base import StageContext, run_pipeline

    path, args = parquet_input
    ctx = StageContext.create(load_config(None, args))
    first = run_pipeline(ctx, ["input", "prepare"])["prepare"]
    assert first["rows"] == pq.read_metadata(path).num_rows
    # The same path, fewer rows (as a user re-exporting a file does).
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 100), path)
    capsys.readouterr()
    ctx = StageContext.create(load_config(None, args))
    again = run_pipeline(ctx, ["input", "prepare"])
    out = capsys.readouterr().out
    assert "[prepare] done already" not in out and "[input] done already" not in out
    assert again["prepare"]["rows"] == table.num_rows - 100 == _prepared_rows(ctx.run_dir)
    assert ctx.run_dir.read_json("prepare", "summary.json")["rows"] == table.num_rows - 100


@pytest.mark.ray
@pytest.mark.slow
def test_force_on_a_stage_reruns_the_stages_after_it(ray_session, parquet_input, capsys):
    from pafo_ray.cli import main

    _, args = parquet_input
    # groups reads prepare (support groups, no embedding: the cheapest stage after it).
    args = args + ["model.mode=finetune", "groups.method=support"]
    stages = ["run.stages=[input,prepare,groups]"]
    assert main(["run", *args, *stages]) == 0
    run_dir = RunDir(load_config(None, args).run.storage_path, "t")
    groups = run_dir.marker("groups")
    assert main(["prepare", "--force", *args]) == 0
    assert run_dir.marker("groups") is None  # invalidated as soon as prepare reran
    capsys.readouterr()
    assert main(["run", *args, *stages]) == 0
    out = capsys.readouterr().out
    assert "[input] done already" in out and "[prepare] done already" in out
    assert "[groups] done already" not in out, out
    assert run_dir.marker("groups")["finished_at"] > groups["finished_at"]


@pytest.mark.ray
@pytest.mark.slow
def test_two_concurrent_runs_one_fails_fast_naming_the_holder(ray_session, parquet_input,
                                                              tmp_path):
    """Two real ``pafo-ray run`` processes on one run directory: the second fails at once
    naming the first (host, pid, start); the first's output matches its summary."""
    from pafo_ray.runlock import LOCK_NAME

    _, args = parquet_input
    args = args + ["run.stages=[input,prepare]"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    lock_file = tmp_path / "runs" / "t" / LOCK_NAME
    first = subprocess.Popen([str(SCRIPT), "run", *args], env=env, cwd=str(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not lock_file.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock_file.exists(), "the first run never took the lock"
        began = time.time()
        second = subprocess.run([str(SCRIPT), "run", *args], env=env, cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=120)
        second_s = time.time() - began
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 3, second.stderr
    assert f"pid {first.pid} on host {socket.gethostname()} since " in second.stderr, \
        second.stderr
    assert second_s < 30, f"the second run took {second_s:.1f} s to give up"
    assert first.returncode == 0, err[-3000:]
    run_dir = RunDir(str(tmp_path / "runs"), "t")
    summary = run_dir.read_json("prepare", "summary.json")
    assert summary["rows"] == _prepared_rows(run_dir) > 0
    assert not lock_file.exists()
