"""Uploads a compiled package to Kubeflow Pipelines and runs it, once or on a schedule.

Everything goes through `kfp.Client`, its chatter silenced and its failures made one
line (`KubeflowError`) without secrets. Nothing here imports TensorFlow or TFX.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import yaml

from pipeline.kubeflow_compile import CompiledPackage, load_package
from pipeline.kubeflow_settings import PIPELINE_NAME_PATTERN
from pipeline.names import EXPERIMENT_NAME, PIPELINE_NAME

# kfp.Client's own variable: a file holding a token, re-read on every request.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
# A token obtained outside the SDK (kfp.Client's `existing_token`).
TOKEN_ENV = "TRANSFERLINE_KFP_TOKEN"


class KubeflowError(RuntimeError):
    """Kubeflow Pipelines could not be reached or refused a request (one line, no secrets)."""


def submit_pipeline(
    host: str,
    package_path: str,
    pipeline_name: str = PIPELINE_NAME,
    *,
    experiment: str = EXPERIMENT_NAME,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """Uploads a compiled package (new pipeline, or a new version of it) and starts a run.

    Credentials: kfp.Client's own mechanisms (IAP variables, kubeflow context
    cookies), plus a token file named by $KF_PIPELINES_SA_TOKEN_PATH or a token
    in $TRANSFERLINE_KFP_TOKEN. They are sent to `host` and never printed.

    Returns:
        Ids: pipeline_id, version_id, version_name, new_pipeline, experiment_id,
        run_id, and run_url.

    Raises:
        ValueError: The package or a setting is unusable.
        KubeflowError: Kubeflow Pipelines could not be reached or refused.
    """
    package = _load_for_upload(package_path, pipeline_name)
    with _kfp_session(host, namespace) as client:
        uploaded = _upload(client, package, pipeline_name)
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name or f"{pipeline_name} {_utc_now():%Y-%m-%d %H:%M:%S} UTC",
            pipeline_id=uploaded["pipeline_id"],
            version_id=uploaded["version_id"],
            pipeline_root=package.pipeline_root,
            service_account=service_account,
        )
    return {**uploaded, "experiment_id": experiment_id, "run_id": run.run_id,
            "run_url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def schedule_pipeline(
    host: str,
    package_path: str,
    cron: str,
    pipeline_name: str = PIPELINE_NAME,
    *,
    experiment: str = EXPERIMENT_NAME,
    job_name: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """Uploads a compiled package like `submit_pipeline` and creates a recurring run.

    Args:
        cron: 5 fields (minute hour day month weekday, as in crontab) or KFP's 6
            (seconds first); 5 fields get a leading "0" seconds field, because KFP
            would read "0 3 * * *" as "second 0, minute 3, every hour".
        max_concurrency: Runs of this schedule allowed at once.
        catchup: Start the runs missed while the schedule was paused.

    Returns:
        The upload ids, experiment_id, recurring_run_id, cron and max_concurrency
        (as sent).

    Raises:
        ValueError: Bad cron expression or package.
        KubeflowError: Kubeflow Pipelines could not be reached or refused.
    """
    kfp_cron = normalize_cron(cron)
    _require(max_concurrency >= 1, f"max_concurrency must be >= 1, got {max_concurrency}")
    package = _load_for_upload(package_path, pipeline_name)
    with _kfp_session(host, namespace) as client:
        uploaded = _upload(client, package, pipeline_name)
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name or f"{pipeline_name}-schedule",
            cron_expression=kfp_cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            pipeline_id=uploaded["pipeline_id"],
            version_id=uploaded["version_id"],
            pipeline_root=package.pipeline_root,
            service_account=service_account,
        )
    return {**uploaded, "experiment_id": experiment_id,
            "recurring_run_id": recurring.recurring_run_id, "cron": kfp_cron,
            "max_concurrency": max_concurrency}


_CRON_FIELDS = (  # name, lowest, highest value
    ("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23),
    ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7),
)


def normalize_cron(cron: str) -> str:
    """KFP's 6-field cron expression for a 5- or 6-field one.

    Raises:
        ValueError: Not 5 or 6 fields, or a field holds an impossible value.
    """
    fields = cron.split()
    _require(len(fields) in (5, 6),
             f"cron must have 5 fields (minute hour day month weekday) or 6 (seconds first), "
             f"got {len(fields)} in {cron!r}")
    if len(fields) == 5:
        fields = ["0", *fields]
    for value, (name, lowest, highest) in zip(fields, _CRON_FIELDS, strict=True):
        _require(re.fullmatch(r"[0-9A-Za-z*?/,#-]+", value) is not None,
                 f"cron {name} field {value!r} has characters cron does not use")
        # Numbers after '/' are steps; the others must be in the field's range.
        for number in re.findall(r"(?<![/\d])\d+", value):
            _require(lowest <= int(number) <= highest,
                     f"cron {name} must be in {lowest}-{highest}, got {number} in {cron!r}")
    return " ".join(fields)


def _load_for_upload(package_path: str, pipeline_name: str) -> CompiledPackage:
    _require(PIPELINE_NAME_PATTERN.fullmatch(pipeline_name) is not None,
             f"pipeline name {pipeline_name!r} must be lower-case letters, digits and '-'")
    return load_package(package_path)


def _upload(client: Any, package: CompiledPackage, pipeline_name: str) -> dict[str, Any]:
    """Uploads the PipelineSpec as a new pipeline, or as a new version of an existing one."""
    documents = [package.spec] + ([package.platform_spec] if package.platform_spec else [])
    spec_yaml = yaml.safe_dump_all(documents, sort_keys=True)
    digest = hashlib.sha256(spec_yaml.encode()).hexdigest()[:8]
    version_name = f"{pipeline_name}-{_utc_now():%Y%m%d-%H%M%S}-{digest}"
    with tempfile.TemporaryDirectory() as folder:
        # Kubeflow Pipelines takes a bare PipelineSpec in YAML (then an optional platform
        # spec), not TFX's PipelineJob JSON.
        spec_path = os.path.join(folder, f"{pipeline_name}.yaml")
        with open(spec_path, "w") as f:
            f.write(spec_yaml)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        new_pipeline = pipeline_id is None
        if new_pipeline:
            pipeline_id = client.upload_pipeline(spec_path, pipeline_name=pipeline_name).pipeline_id
            version = _latest_version(client, pipeline_id)
        else:
            version = client.upload_pipeline_version(
                spec_path, version_name, pipeline_id=pipeline_id
            )
    return {
        "pipeline_id": pipeline_id,
        "version_id": version.pipeline_version_id,
        "version_name": version.display_name or version_name,
        "new_pipeline": new_pipeline,
    }


def _latest_version(client: Any, pipeline_id: str) -> Any:
    """The version Kubeflow Pipelines made when the pipeline was uploaded."""
    versions = client.list_pipeline_versions(
        pipeline_id, page_size=1, sort_by="created_at desc"
    ).pipeline_versions
    if not versions:
        raise KubeflowError(f"Kubeflow Pipelines created pipeline {pipeline_id} without a version")
    return versions[0]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@contextlib.contextmanager
def _kfp_session(host: str, namespace: str | None) -> Iterator[Any]:
    """A kfp.Client for `host`; kfp's chatter silenced, its failures made one line."""
    _require(re.match(r"https?://[^/\s]+", host or "") is not None,
             f"host must be the Kubeflow Pipelines URL, e.g. http://localhost:8080, got {host!r}")
    import kfp
    import kfp_server_api
    import urllib3
    from kfp.client import set_volume_credentials

    token = os.environ.get(TOKEN_ENV) or None
    token_file = None if token else os.environ.get(SA_TOKEN_PATH_ENV) or None
    credentials = token_file and set_volume_credentials.ServiceAccountTokenVolumeCredentials(
        token_file
    )
    logging_disabled = logging.root.manager.disable
    try:
        # kfp prints links, warns and logs tracebacks; the caller reports what happened.
        logging.disable(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            client = kfp.Client(
                host=host.rstrip("/"), existing_token=token, credentials=credentials or None,
                namespace=namespace or "kubeflow",
            )
            _check_api(client, host)
            yield client
    except urllib3.exceptions.HTTPError as error:
        raise KubeflowError(
            f"cannot reach Kubeflow Pipelines at {host}: {_connection_reason(error)}"
        ) from error
    except kfp_server_api.ApiException as error:
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} refused the request: {_api_reason(error)}"
        ) from error
    except TimeoutError as error:  # kfp.Client's health check gave up
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} did not pass its health check "
            "(GET /apis/v2beta1/healthz); check the URL and credentials"
        ) from error
    except OSError as error:
        if token_file is None or error.filename != token_file:
            raise
        raise KubeflowError(
            f"cannot read the token file named by ${SA_TOKEN_PATH_ENV}: {error.strerror}"
        ) from error
    finally:
        logging.disable(logging_disabled)


def _check_api(client: Any, host: str) -> None:
    """Fails clearly when `host` answers with a web page (a login redirect) instead of JSON."""
    response = client.healthzs.get_healthz(_preload_content=False)
    if "json" not in response.headers.get("Content-Type", ""):
        raise KubeflowError(
            f"{host} answered with {response.headers.get('Content-Type') or 'no content type'}, "
            "not the Kubeflow Pipelines API (a login page?); check the URL and credentials"
        )


def _connection_reason(error: Exception) -> str:
    reason = str(getattr(error, "reason", None) or error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", reason)
    text = match.group(1) if match else reason.rsplit(": ", 1)[-1]
    return text.strip().rstrip(".")[:200].lower()


def _api_reason(error: Any) -> str:
    detail = ""
    try:
        body = json.loads(error.body or "{}")
        detail = body.get("error_message") or body.get("message") or body.get("error") or ""
    except (TypeError, ValueError, AttributeError):
        pass
    text = f"{error.status} {error.reason or ''}".strip()
    detail = " ".join(str(detail).split())[:300]
    return f"{text}: {detail}" if detail else text


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
