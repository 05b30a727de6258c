"""``run.storage_path=s3://...`` against a local S3 (moto's server on loopback).

Two ways to point pyarrow (and so RunDir, Ray Data and Ray Train, which all go through
``pyarrow.fs.FileSystem.from_uri``) at an S3-compatible endpoint:

* the environment: ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) plus credentials, as
  pods get them; every Ray process must have it, so the stage tests start a head node
  with that environment and run ``pafo-ray`` as a driver that joins it;
* the URI itself: ``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http``,
  which RunDir keeps at the end of every path it joins.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import small_overrides

BUCKET = "pafo-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
CLI_TIMEOUT_S = int(os.environ.get("PAFO_TEST_CLI_TIMEOUT_S", "600"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}
        self.query = f"endpoint_override=127.0.0.1:{port}&scheme=http"

    def filesystem(self):
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(access_key="testing", secret_key="testing",
                                 region="us-east-1", endpoint_override=f"127.0.0.1:{self.port}",
                                 scheme="http")

    def keys(self, prefix: str) -> list:
        from pyarrow import fs as pafs

        fs = self.filesystem()
        infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                   allow_not_found=True))
        return sorted(i.path[len(BUCKET) + 1:] for i in infos if i.type == pafs.FileType.File)

    def read_json(self, key: str):
        with self.filesystem().open_input_stream(f"{BUCKET}/{key}") as src:
            return json.loads(src.read().decode())


@pytest.fixture(scope="module")
def s3():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # a dev dependency: fail loudly rather than skip
        pytest.fail("moto[server] is missing: pip install -e '.[dev]'")
    import boto3

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).create_bucket(Bucket=BUCKET)
        yield S3(port)
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process talks to the moto server through the environment."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return s3


# (a) RunDir on S3 ----------------------------------------------------------------------


def test_join_keeps_the_query_at_the_end():
    from pafo_ray.storage import RunDir, join

    assert join("s3://b/p?endpoint_override=h:1&scheme=http", "run", "x.json") == \
        "s3://b/p/run/x.json?endpoint_override=h:1&scheme=http"
    assert join("s3://b/p", "run") == "s3://b/p/run"
    assert join("/tmp/a", "b") == "/tmp/a/b"
    rd = RunDir("s3://b/p?endpoint_override=127.0.0.1:9&scheme=http", "r")
    assert rd.uri("prepare", "data") == "s3://b/p/r/prepare/data?endpoint_override=127.0.0.1:9&scheme=http"
    assert rd.fs_path("prepare") == "b/p/r/prepare"


@pytest.mark.parametrize("form", ["env", "query"])
def test_rundir_on_s3(s3, monkeypatch, tmp_path, form):
    from pyarrow import fs as pafs

    from pafo_ray.storage import RunDir, download_dir, upload_dir

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    if form == "env":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
        storage = f"s3://{BUCKET}/a-{form}"
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        storage = f"s3://{BUCKET}/a-{form}?{s3.query}"
    rd = RunDir(storage, "run")
    assert isinstance(rd.fs, pafs.S3FileSystem)
    assert rd.local_dir("x") is None
    assert rd.fs_path("stage") == f"{BUCKET}/a-{form}/run/stage"

    rd.start("stage")
    rd.write_json({"a": 1, "b": [1, 2]}, "stage", "summary.json")
    rd.write_bytes(b"\x00\x01bytes", "stage", "sub", "blob.bin")
    assert rd.read_json("stage", "summary.json") == {"a": 1, "b": [1, 2]}
    assert rd.read_bytes("stage", "sub", "blob.bin") == b"\x00\x01bytes"
    assert rd.exists("stage", "sub", "blob.bin") and not rd.exists("stage", "nope.bin")
    # The objects really are in the bucket, under the prefix (not in a local folder).
    assert s3.keys(f"a-{form}/run") == [f"a-{form}/run/stage/sub/blob.bin",
                                         f"a-{form}/run/stage/summary.json"]

    assert not rd.is_complete("stage", "h1") and rd.marker("stage") is None
    rd.mark_complete("stage", "h1", rows=3)
    assert rd.is_complete("stage", "h1") and not rd.is_complete("stage", "h2")
    assert rd.marker("stage")["rows"] == 3
    assert s3.read_json(f"a-{form}/run/stage/_SUCCESS.json")["config_hash"] == "h1"

    local = tmp_path
    (local / "model").mkdir()
    (local / "model" / "config.json").write_text('{"k": 2}')
    upload_dir(str(local / "model"), rd, "stage", "model")
    assert rd.read_json("stage", "model", "config.json") == {"k": 2}
    back = download_dir(rd, str(local / "back"), "stage", "model")
    assert json.loads((Path(back) / "config.json").read_text()) == {"k": 2}

    rd.remove("stage", "sub", "blob.bin")
    assert not rd.exists("stage", "sub", "blob.bin")
    rd.start("stage")  # clears stale output, marker included
    assert not rd.is_complete("stage", "h1")
    assert s3.keys(f"a-{form}/run/stage") == []
    rd.remove("stage")
    rd.remove("never-written")  # a no-op, not an error
    assert not rd.exists("stage")


def test_run_lock_on_s3(s3_env):
    """On an object store the lock is written, read back, and refused to a second writer;
    an expired one is taken over (best effort: see pafo_ray/runlock.py)."""
    import socket

    from pafo_ray.runlock import LOCK_NAME, RunLock, RunLocked
    from pafo_ray.storage import RunDir

    rd = RunDir(f"s3://{BUCKET}/locks", "run")
    with RunLock(rd, lease_s=30) as lock:
        assert s3_env.read_json(f"locks/run/{LOCK_NAME}")["token"] == lock.token
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(rd, lease_s=30).acquire()
    assert s3_env.keys("locks/run") == []
    stale = {"host": "elsewhere", "pid": 1, "started_at": 0, "renewed_at": time.time() - 100,
             "token": "old", "command": "pafo-ray run"}
    rd.write_json(stale, LOCK_NAME)
    with RunLock(rd, lease_s=30) as lock:
        assert s3_env.read_json(f"locks/run/{LOCK_NAME}")["token"] == lock.token


# (b) and (c): the stages on S3, through the CLI ------------------------------------------
# One `pafo-ray run` of input, prepare, embed and teachers, a driver joining a head node
# started with the S3 environment, serves both tests; the rerun check runs in this process.

PREFIX = "pipeline"


def _stages(args: list) -> list:
    """Every active stage up to teachers (input, prepare, embed, ... in pipeline order)."""
    from pafo_ray.config import load_config
    from pafo_ray.stages.base import ORDER, is_active

    cfg = load_config(None, args)
    return [s for s in ORDER[:ORDER.index("teachers") + 1] if is_active(cfg, s)]


def _overrides(tmp_path) -> list:
    args = _base_overrides(tmp_path)
    return args + ["run.stages=[" + ",".join(_stages(args)) + "]"]


def _base_overrides(tmp_path) -> list:
    return small_overrides(tmp_path, **{
        "run.storage_path": f"s3://{BUCKET}/{PREFIX}", "run.run_name": "t",
        "train.select_regularization": False,  # not what this test is about
        "prepare.num_partitions": 2,
        # Real Ray Train workers (not in-process) checkpoint to S3 every epoch.
        "train.epochs": 2, "train.checkpoint_every": 1, "train.num_workers": 1,
        "train.cpus_per_worker": 1})


def _explain(proc) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def pipeline_on_s3(s3, tmp_path_factory):
    from test_job_submit import head_node

    cwd = tmp_path_factory.mktemp("s3_pipeline")
    args = _overrides(cwd)
    # Its own head node (fixed ports: robust on a busy machine), started with the S3
    # environment so that every Ray worker has it; the driver joins it.
    with head_node(cwd, extra_env=s3.env) as cluster:
        env = {**os.environ, **s3.env, "RAY_AUTH_MODE": "disabled",
               "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1",
               "RAY_ADDRESS": cluster.gcs_address}
        env.pop("AWS_ENDPOINT_URL", None)
        cmd = [str(Path(sys.executable).parent / "pafo-ray"), "run", *args]
        began = time.time()
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True,
                                  timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
                else exc.stdout
            pytest.fail(f"pafo-ray run timed out after {CLI_TIMEOUT_S} s:\n{(out or '')[-6000:]}")
        print(f"\npafo-ray run {','.join(_stages(args))} on S3: {time.time() - began:.1f} s")
    return proc, args, cwd


@pytest.mark.slow
@pytest.mark.ray
def test_input_and_prepare_write_to_s3_and_a_rerun_skips(s3_env, pipeline_on_s3, monkeypatch,
                                                          capsys):
    s3 = s3_env
    proc, args, cwd = pipeline_on_s3
    keys = s3.keys(f"{PREFIX}/t")
    for stage in ("input", "prepare"):
        assert f"{PREFIX}/t/{stage}/_SUCCESS.json" in keys, _explain(proc)
        assert f"{PREFIX}/t/{stage}/summary.json" in keys, keys
    rows = [k for k in keys if k.startswith(f"{PREFIX}/t/input/rows/") and k.endswith(".parquet")]
    data = [k for k in keys if k.startswith(f"{PREFIX}/t/prepare/data/split=train/group=")
            and k.endswith(".parquet")]
    assert rows and data, keys
    assert f"{PREFIX}/t/prepare/users.parquet" in keys
    assert not any("/_support" in k for k in keys), "prepare left its scratch folder"
    # Nothing landed in a local folder (the working directory of the run).
    assert not (cwd / "runs").exists() and not (cwd / "s3:").exists()
    assert not (cwd / "pafo_runs").exists()

    summary = s3.read_json(f"{PREFIX}/t/prepare/summary.json")
    input_summary = s3.read_json(f"{PREFIX}/t/input/summary.json")
    assert input_summary["path"] == f"s3://{BUCKET}/{PREFIX}/t/input/rows"
    assert summary["rows"] == input_summary["rows"] > 0

    import pyarrow.dataset as pads

    table = pads.dataset(f"{BUCKET}/{PREFIX}/t/prepare/data", filesystem=s3.filesystem(),
                         format="parquet", partitioning="hive").to_table()
    assert table.num_rows == summary["rows"]
    assert {"support_rate", "group", "split", "user_id"} <= set(table.column_names)

    # A rerun with the same config finds every complete stage on S3 and runs none of them
    # (the CLI's own code path, here in-process: a stage that runs anyway raises).
    from pafo_ray.config import load_config
    from pafo_ray.stages import base

    done = [s for s in _stages(args) if f"{PREFIX}/t/{s}/_SUCCESS.json" in keys]
    assert done[:2] == ["input", "prepare"], done
    markers = {s: s3.read_json(f"{PREFIX}/t/{s}/_SUCCESS.json") for s in done}

    def must_not_run(ctx):
        raise AssertionError("a complete stage on S3 ran again")

    for stage in done:
        monkeypatch.setattr(base.stage_module(stage), "run", must_not_run)
    ctx = base.StageContext.create(load_config(None, args))
    base.run_pipeline(ctx, done)
    out = capsys.readouterr().out
    for stage in done:
        assert f"[{stage}] done already (s3://{BUCKET}/{PREFIX}/t/{stage})" in out, out
        assert s3.read_json(f"{PREFIX}/t/{stage}/_SUCCESS.json") == markers[stage]


@pytest.mark.slow
@pytest.mark.ray
def test_teachers_checkpoint_to_s3(s3, pipeline_on_s3):
    """Ray Train with ``storage_path`` on S3: checkpoints and the saved models land there."""
    proc, _, _ = pipeline_on_s3
    assert proc.returncode == 0, _explain(proc)
    keys = s3.keys(f"{PREFIX}/t")
    assert f"{PREFIX}/t/embed/_SUCCESS.json" in keys, keys
    assert f"{PREFIX}/t/teachers/_SUCCESS.json" in keys, keys
    summary = s3.read_json(f"{PREFIX}/t/teachers/summary.json")
    trained = list(summary["jobs"])
    assert "vanilla" in trained and set(summary["groups"]) <= set(trained) | set(
        summary["fallbacks"]), summary
    for job in ["vanilla", *summary["groups"]]:
        model = [k for k in keys if k.startswith(f"{PREFIX}/t/teachers/{job}/")]
        assert any(k.endswith("margin_stats.json") for k in model), (job, model)
    for job in trained:
        assert summary["jobs"][job]["model"] == f"s3://{BUCKET}/{PREFIX}/t/teachers/{job}"
        # Ray Train wrote its checkpoints under <run>/_ray/teachers/<job>-<hash>/ on S3:
        # two epochs, a checkpoint each.
        ckpts = {k.split("/checkpoint_")[1].split("/")[0] for k in keys
                 if k.startswith(f"{PREFIX}/t/_ray/teachers/{job}-") and "/checkpoint_" in k
                 and k.endswith("train_state.pt")}
        assert len(ckpts) == 2, (job, sorted(k for k in keys if "/_ray/" in k)[:20])


# (d) No secrets at rest: credentials in an S3 URI reach no output file and no log line ------


@pytest.mark.ray
def test_a_secret_in_a_uri_reaches_no_output_and_no_log(ray_session, s3, tmp_path, capfd,
                                                        caplog):
    """``data.path`` names the input in the bucket with its key pair in the URI (pyarrow's
    ``s3://KEY:SECRET@bucket/...``; moto accepts any secret). Input and prepare run through
    the CLI; the secret is in no file of the run and in nothing printed or logged."""
    import logging

    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    from pafo_ray.cli import main
    from pafo_ray.config import GeneratorConfig
    from pafo_ray.data.generate import write_generated

    secret = "SEKRETsekret0123"
    [local] = write_generated(GeneratorConfig(num_users=60, num_prompts=40, raters_train=3,
                                              raters_eval=5), str(tmp_path / "in"))
    pafs.copy_files(local, f"{BUCKET}/secret-in/part-00000.parquet",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3.filesystem())
    path = f"s3://testing:{secret}@{BUCKET}/secret-in?{s3.query}"
    args = small_overrides(tmp_path, **{"data.source": "parquet", "data.path": path,
                                        "prepare.num_partitions": 2})
    caplog.set_level(logging.INFO)
    assert main(["run", *args, "run.stages=[input,prepare]"]) == 0
    assert main(["show-config", *args]) == 0
    # The same secret as a query parameter: pyarrow refuses it, and the error names no secret.
    query_path = f"s3://{BUCKET}/secret-in?{s3.query}&secret_key={secret}"
    assert main(["run", *args, f"data.path={query_path}", "run.run_name=q",
                 "run.stages=[input]"]) == 1
    printed = capfd.readouterr()
    shown = f"s3://{BUCKET}/secret-in?{s3.query}"
    assert f"reading parquet at {shown}" in printed.out, printed.out
    for text in (printed.out, printed.err, caplog.text):
        assert secret not in text, text[-3000:]

    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and len(files) > 5
    for file in files:
        assert secret.encode() not in file.read_bytes(), file
    summary = json.loads((tmp_path / "runs" / "t" / "input" / "summary.json").read_text())
    assert summary["path"] == shown and summary["fingerprint"]["files"] == 1
    rows = pads.dataset(str(tmp_path / "runs" / "t" / "prepare" / "data"), format="parquet",
                        partitioning="hive").to_table()
    assert rows.num_rows > 0
    assert set(rows.column("source_file").to_pylist()) == {
        f"s3://{BUCKET}/secret-in/part-00000.parquet?{s3.query}"}
