"""Publishing a model version into a repository (a dir or S3) so Triton never sees a half-written one."""

from __future__ import annotations

import shutil
from pathlib import Path

from visionnode.components.common.errors import ConfigError, ServiceError, one_line
from visionnode.components.common.jsonio import staged_dir
from visionnode.components.common.serving.triton import RepositoryTarget, parse_repository
from visionnode.components.common.storage.s3 import s3_client
from visionnode.components.deploy.repository import CONFIG_FILE, LABELS_FILE, existing_versions


def repository_targets(user_repository: str, triton_repository: str | None) -> tuple[RepositoryTarget,
                                                                                     list[RepositoryTarget]]:
    """(the repository Triton loads from, every repository to publish to)."""
    targets: list[RepositoryTarget] = []
    for uri in (triton_repository, user_repository):
        if uri:
            target = parse_repository(uri)
            if target.identity not in {t.identity for t in targets}:
                targets.append(target)
    if not targets:
        raise ConfigError("no model repository is known",
                          "pass --repository s3://bucket/prefix|DIR, or start the stack (`visionnode stack "
                          "up`)")
    return targets[0], targets


def remote_versions(target: RepositoryTarget, name: str) -> list[int]:
    if target.local_dir is not None:
        return existing_versions(target.local_dir / name)
    assert target.location is not None
    prefix = target.location.child(name).key.rstrip("/") + "/"
    try:
        pages = s3_client(target.s3).get_paginator("list_objects_v2").paginate(
            Bucket=target.location.bucket, Prefix=prefix, Delimiter="/")
        names = [p["Prefix"][len(prefix):].strip("/") for page in pages for p in page.get("CommonPrefixes",
                                                                                          [])]
    except Exception as exc:  # botocore raises ClientError / EndpointConnectionError / NoCredentialsError
        raise ServiceError(f"cannot list {target.uri}/{name}: {one_line(exc)}",
                           "check the S3 endpoint, bucket and credentials") from None
    return sorted(int(n) for n in names if n.isdigit())


def publish(staging: Path, target: RepositoryTarget, model_names: list[str], version: int) -> None:
    """Copy `<staging>/<model>/` into `target`: the version dir first, config.pbtxt last, so a reader never
    sees a config naming files that are not there yet."""
    for name in model_names:
        source = staging / name
        if target.local_dir is not None:
            _publish_local(source, target.local_dir / name, version)
            continue
        ordered = sorted((p for p in (source / str(version)).rglob("*") if p.is_file()))
        ordered += [source / n for n in (LABELS_FILE, CONFIG_FILE) if (source / n).is_file()]
        _publish_s3(source, target, name, ordered)


def _publish_local(source: Path, model_dir: Path, version: int) -> None:
    with staged_dir(model_dir / str(version)) as staging:
        shutil.copytree(source / str(version), staging, dirs_exist_ok=True)
    for name in (n for n in (LABELS_FILE, CONFIG_FILE) if (source / n).is_file()):
        tmp = model_dir / f".{name}.partial"
        shutil.copyfile(source / name, tmp)
        tmp.replace(model_dir / name)


def _publish_s3(source: Path, target: RepositoryTarget, name: str, files: list[Path]) -> None:
    assert target.location is not None
    client = s3_client(target.s3)
    base = target.location.child(name)
    for path in files:
        key = base.child(path.relative_to(source).as_posix()).key
        try:
            client.upload_file(str(path), base.bucket, key)
        except Exception as exc:  # boto3 S3UploadFailedError / ClientError / EndpointConnectionError
            raise ServiceError(f"cannot upload {path.name} to s3://{base.bucket}/{key}: {one_line(exc)}",
                               "check the S3 endpoint, bucket and credentials") from None


WITHDRAWN_FILE = "WITHDRAWN"


def withdraw_version(target: RepositoryTarget, name: str, version: int, note: str) -> None:
    """Delete the files of `<name>/<version>/` (a withdrawn candidate) but leave a note in its place, so the
    number stays taken: a later candidate gets a new one, as its registered version already has."""
    if target.local_dir is not None:
        directory = target.local_dir / name / str(version)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        (directory / WITHDRAWN_FILE).write_text(note + "\n")
        return
    assert target.location is not None
    client = s3_client(target.s3)
    folder = target.location.child(name).child(str(version))
    prefix = folder.key.rstrip("/") + "/"
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=folder.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=folder.bucket, Delete={"Objects": keys})
        client.put_object(Bucket=folder.bucket, Key=prefix + WITHDRAWN_FILE, Body=(note + "\n").encode())
    except Exception as exc:  # botocore ClientError / EndpointConnectionError
        raise ServiceError(f"cannot withdraw {target.uri}/{name}/{version}: {one_line(exc)}",
                           "check the S3 endpoint, bucket and credentials") from None
