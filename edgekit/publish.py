"""Publish an output folder to S3-compatible storage, and fetch it back, every byte checked by sha256.

    s3://bucket/prefix/objects/<sha256>   one object per distinct file content (content-addressed)
    s3://bucket/prefix/index.json         path -> sha256 + bytes of every file; written LAST, after every object
                                          it names was uploaded and read back, so a reader never sees a half build

Credentials come only from the standard AWS chain (environment, ~/.aws/config and credentials, instance roles):
edgekit never reads or writes a credential in its own files. The endpoint is ``--endpoint`` or boto3's own
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO, SeaweedFS, another S3-compatible store); none means AWS S3.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from edgekit.errors import ConfigError, EdgekitError, TamperError, UsageError
from edgekit.fsutil import atomic_write_bytes
from edgekit.tables import parse_table
from edgekit.types import ArtifactFile, reference_files

INDEX = "index.json"
INDEX_FORMAT = 1
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CHUNK = 1 << 20

OnObject = Callable[[int, int, str], None]  # (objects done, objects total, path): called after each verified object


class PublishError(EdgekitError):
    """The object store cannot be reached, refuses the request, or returned other bytes than were sent."""


@dataclass(frozen=True)
class PublishConfig:
    """``[publish]`` of a fleet file: where ``edgekit fleet`` publishes its output when it ends."""

    url: str = ""
    endpoint: str | None = None


def parse_publish(table: Any, where: str) -> PublishConfig:
    cfg = parse_table(PublishConfig, table, where, ConfigError)
    if not cfg.url:
        raise ConfigError(f"{where} needs 'url', e.g. url = \"s3://bucket/prefix\"")
    split_url(cfg.url, where)
    return cfg


def split_url(url: str, where: str = "") -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    at = f"{where} url = " if where else ""
    if not url.startswith("s3://"):
        raise UsageError(f"{at}{url!r} is not an S3 URL; write s3://bucket/prefix")
    bucket, _, prefix = url[5:].partition("/")
    if not BUCKET.match(bucket):
        raise UsageError(f"{at}{url!r}: '{bucket}' is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')")
    return bucket, prefix.strip("/")


def client(endpoint: str | None = None) -> Any:
    """A boto3 S3 client on the standard credential chain; path-style addressing for a custom endpoint."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("publishing needs boto3: pip install 'edgekit[fleet]' (or pip install boto3)") from None
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}) if endpoint else None
    # a new session per client: boto3's default session caches the credentials it found first
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def local_files(root: Path) -> list[ArtifactFile]:
    """Every file under ``root`` except hidden ones (the cache, staging folders), after checking each manifest's sha256."""
    from edgekit.manifest import MANIFEST, read_manifest, verify_files

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; pass an output directory of edgekit build or edgekit fleet")
    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    manifests = [p.parent for p in files if p.name == MANIFEST]
    if not manifests:
        raise UsageError(f"{root} holds no {MANIFEST}; publish an output directory of edgekit build or edgekit fleet")
    for folder in manifests:  # never publish a file the manifest no longer vouches for
        m = read_manifest(folder)
        verify_files(folder, reference_files(m.reference) + [f for r in m.results.values() if r.artifact
                                                                      for f in r.artifact.files])
    return [ArtifactFile.of(p, root) for p in files]


def publish(root: Path, url: str, endpoint: str | None = None, on_object: OnObject | None = None) -> dict[str, Any]:
    """Upload every file of ``root`` as a content-addressed object, read each back, then write the index; return it."""
    bucket, prefix = split_url(url)
    files = local_files(root)
    s3 = client(endpoint)
    by_sha = {f.sha256: f for f in files}
    done = 0
    with _errors(url):
        for sha, f in by_sha.items():
            key = _key(prefix, f"objects/{sha}")
            if not _present(s3, bucket, key, f):
                with open(Path(root) / f.path, "rb") as fh:
                    s3.put_object(Bucket=bucket, Key=key, Body=fh, ContentLength=f.bytes, Metadata={"sha256": sha})
                _check_object(s3, bucket, key, sha, f.path)
            done += 1
            if on_object is not None:
                on_object(done, len(by_sha), f.path)
        index = {"format": INDEX_FORMAT, "files": [vars(f) for f in files]}
        body = (json.dumps(index, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
        sha = hashlib.sha256(body).hexdigest()
        s3.put_object(Bucket=bucket, Key=_key(prefix, INDEX), Body=body, Metadata={"sha256": sha},
                      ContentType="application/json")
        _check_object(s3, bucket, _key(prefix, INDEX), sha, INDEX)
    return index


def fetch(url: str, out: Path, endpoint: str | None = None, on_object: OnObject | None = None) -> dict[str, Any]:
    """Download the build ``url`` names into ``out`` (a staging folder moved into place), checking every sha256."""
    from edgekit.outdir import make_staging, promote

    bucket, prefix = split_url(url)
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _ours(out))):
        raise UsageError(f"{out} exists and is not an edgekit output directory; fetch into a new or empty folder")
    s3 = client(endpoint)
    with _errors(url):
        index = _read_index(s3, bucket, prefix, url)
        files = [ArtifactFile(**f) for f in index["files"]]
        staging = make_staging(out)
        try:
            for i, f in enumerate(files):
                _download(s3, bucket, _key(prefix, f"objects/{f.sha256}"), staging, f)
                if on_object is not None:
                    on_object(i + 1, len(files), f.path)
            promote(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return index


# -------------------------------------------------------------------------------------------- helpers


def _ours(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() or (folder / "fleet.json").is_file()


def _present(s3: Any, bucket: str, key: str, f: ArtifactFile) -> bool:
    """The content-addressed object is already there, whole (S3 never shows a partly written object)."""
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == f.bytes and head.get("Metadata", {}).get("sha256") == f.sha256


def _check_object(s3: Any, bucket: str, key: str, sha: str, path: str) -> None:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
    if digest.hexdigest() != sha:
        raise PublishError(f"s3://{bucket}/{key} ({path}) read back with sha256 {digest.hexdigest()[:12]}… != "
                           f"{sha[:12]}… uploaded; the store corrupted it, publish again")


def _read_index(s3: Any, bucket: str, prefix: str, url: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=_key(prefix, INDEX))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise UsageError(f"{url} has no {INDEX}: nothing was published there (or a publish was interrupted "
                             "before it finished); publish with edgekit publish DIR URL") from None
        raise
    try:
        index = json.loads(body)
        files = index["files"]
        ok = index.get("format") == INDEX_FORMAT and all(set(f) == {"path", "sha256", "bytes"} for f in files)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise TamperError(f"{url}/{INDEX} is not an edgekit publish index; publish again with edgekit publish")
    return index


def _download(s3: Any, bucket: str, key: str, root: Path, f: ArtifactFile) -> None:
    rel = PurePosixPath(f.path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise TamperError(f"the index names the path {f.path!r}, outside the output folder; refusing to fetch it")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    actual = hashlib.sha256(body).hexdigest()
    if actual != f.sha256 or len(body) != f.bytes:
        raise TamperError(f"s3://{bucket}/{key} ({f.path}) has sha256 {actual[:12]}… but the index vouches for "
                          f"{f.sha256[:12]}…; the object was modified, publish again")
    atomic_write_bytes(root / rel, body)


class _errors:
    """botocore's exceptions as one-line PublishErrors naming the URL and what to check."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None or isinstance(exc, EdgekitError) or not isinstance(exc, Exception):
            return False
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            raise PublishError("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                               "AWS_PROFILE / ~/.aws/credentials (the standard AWS chain)") from None
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            raise PublishError(f"{self.url}: the store refused {exc.operation_name} ({err.get('Code')}: "
                               f"{err.get('Message')}); check the bucket exists and the credentials may write it") from None
        if isinstance(exc, BotoCoreError):
            raise PublishError(f"{self.url}: {exc}; check --endpoint and that the store is up") from None
        return False
