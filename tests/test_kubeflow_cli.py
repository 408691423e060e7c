"""`transferline compile | submit | schedule` against a recording stub of the KFP REST API.

The stub below is NOT Kubeflow Pipelines. It is a recording stub: an HTTP server on
127.0.0.1 (random port, own thread, stopped after each test) that records every
request kfp 2.5.0's Client makes and answers the smallest valid JSON for the
v2beta1 endpoints it calls (paths from kfp_server_api). The tests assert what was
sent: paths, the uploaded pipeline, the run and recurring-run bodies, and that the
credentials reach the stub but never the output.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import yaml

from pipeline import cli, kfp_client, kubeflow_compile
from pipeline import pipeline as transferline

SECRET = "s3cr3t-token-do-not-print"
IMAGE = "registry.example.com/transferline:7"
API = "/apis/v2beta1"


class RecordingKfpStub:
    """Records requests; answers like the KFP v2beta1 API just enough for kfp.Client."""

    def __init__(self, existing_pipeline: bool = False, deny_runs: bool = False,
                 login_page: bool = False) -> None:
        self.requests: list[dict] = []
        self.pipelines = [{"pipeline_id": "pipeline-1", "display_name": "transferline"}] \
            if existing_pipeline else []
        self.experiments: list[dict] = []
        self.deny_runs = deny_runs
        self.login_page = login_page
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                stub._handle(self, "GET")

            def do_POST(self):  # noqa: N802
                stub._handle(self, "POST")

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stop_timer = threading.Timer(120, self.stop)  # stops itself if a test hangs
        self._stop_timer.daemon = True

    def __enter__(self) -> RecordingKfpStub:
        self._thread.start()
        self._stop_timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop_timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]

    def request(self, method: str, path: str) -> dict:
        return next(r for r in self.requests if (r["method"], r["path"]) == (method, path))

    def _handle(self, handler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        record = {
            "method": method, "path": url.path,
            "query": {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()},
            "authorization": handler.headers.get("Authorization"),
            "json": None, "files": {},
        }
        content_type = handler.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            record["files"] = _multipart_files(content_type, body)
        elif body:
            record["json"] = json.loads(body)
        self.requests.append(record)
        status, answer = self._answer(method, url.path, record)
        payload = json.dumps(answer).encode()
        content_type = "application/json"
        if self.login_page:  # what an auth proxy's login redirect ends on
            payload, content_type = b"<html><body>Log in</body></html>", "text/html"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(self, method: str, path: str, record: dict) -> tuple[int, dict]:
        query = record["query"]
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/pipelines"):
            return 200, {"pipelines": self.pipelines, "total_size": len(self.pipelines)}
        if (method, path) == ("POST", f"{API}/pipelines/upload"):
            pipeline = {"pipeline_id": "pipeline-1", "display_name": query["name"]}
            self.pipelines.append(pipeline)
            return 200, pipeline
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            version = {"pipeline_id": pipeline_id, "pipeline_version_id": "version-1",
                       "display_name": self.pipelines[0]["display_name"]}
            return 200, {"pipeline_versions": [version], "total_size": 1}
        if (method, path) == ("POST", f"{API}/pipelines/upload_version"):
            return 200, {"pipeline_id": query["pipelineid"], "pipeline_version_id": "version-2",
                         "display_name": query["name"]}
        if (method, path) == ("GET", f"{API}/experiments"):
            return 200, {"experiments": self.experiments, "total_size": len(self.experiments)}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {"experiment_id": "experiment-1", **record["json"]}
            self.experiments.append(experiment)
            return 200, experiment
        if (method, path) == ("POST", f"{API}/runs"):
            if self.deny_runs:
                return 403, {"error_message": "user may not create runs", "code": 7}
            return 200, {"run_id": "run-1", **record["json"]}
        if (method, path) == ("POST", f"{API}/recurringruns"):
            return 200, {"recurring_run_id": "recurring-1", **record["json"]}
        return 404, {"error_message": f"{method} {path} is not in the recording stub"}


def _multipart_files(content_type: str, body: bytes) -> dict[str, dict]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): {
            "filename": part.get_filename(), "content": part.get_payload(decode=True).decode(),
        }
        for part in message.iter_parts()
    }




def _compile_flags(data_root: str) -> list[str]:
    return ["--image", IMAGE, "--pipeline-root", "gs://bucket/root", "--data", data_root,
            "--serving-dir", "gs://bucket/serving", "--gpus", "1"]


@pytest.fixture
def package(tmp_path, data_root):
    path = str(tmp_path / "pipeline.json")
    assert cli.main(["compile", "--output", path, *_compile_flags(data_root)]) == 0
    return path


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv(kfp_client.TOKEN_ENV, SECRET)
    monkeypatch.delenv(kfp_client.SA_TOKEN_PATH_ENV, raising=False)


def _uploaded_documents(request: dict) -> list[dict]:
    upload = request["files"]["uploadfile"]
    assert upload["filename"].endswith(".yaml")
    return list(yaml.safe_load_all(upload["content"]))


def _uploaded_spec(request: dict) -> dict:
    return _uploaded_documents(request)[0]


# ------------------------------------------------------------------------ tests


def test_compile_prints_size_tasks_cache_and_gate(tmp_path, data_root, capsys):
    path = str(tmp_path / "out.json")
    assert cli.main(["compile", "--output", path, *_compile_flags(data_root)]) == 0

    out = capsys.readouterr().out
    assert f"({os.path.getsize(path) / 1024:.1f} KiB)" in out
    assert "tasks (12):" in out and "resolver" not in out
    assert "Trainer" in out and "1 x nvidia.com/gpu" in out
    assert "    ServingBaseline " in out and "    WarmStartModel " in out and "    Embedder " in out
    assert ("  KFP cache: on, except ImageFolderExampleGen, ServingBaseline (they read the "
            "image folder and the serving directory") in out
    assert ("  gate: accuracy overall >= 0.5; accuracy overall change >= -0.0100 against the "
            "version being served (absolute bounds only while none is)\n") in out


def test_compile_without_baseline_or_warm_start_has_no_reader_task(tmp_path, data_root, capsys):
    path = str(tmp_path / "out.yaml")
    assert cli.main(["compile", "--output", path, "--no-baseline", "--no-warm-start",
                     *_compile_flags(data_root)]) == 0

    out = capsys.readouterr().out
    assert "tasks (10):" in out
    assert ("  gate: accuracy overall >= 0.5; no baseline (--no-baseline): no no-regression "
            "check") in out
    tasks = kubeflow_compile.load_package(path).tasks()
    assert transferline.EVALUATOR in tasks
    assert not {"ServingBaseline", "WarmStartModel"} & set(tasks)


def test_submit_uploads_a_new_pipeline_and_starts_a_run(package, capsys):
    with RecordingKfpStub() as stub:
        code = cli.main(["submit", "--host", stub.url, "--package", package,
                         "--experiment", "nightly", "--run-name", "first run"])

    assert code == 0
    assert stub.calls() == [
        ("GET", f"{API}/healthz"),  # kfp.Client's
        ("GET", f"{API}/healthz"),  # ours: is it the API, not a login page?
        ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/pipeline-1/versions"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    name_filter = json.loads(stub.request("GET", f"{API}/pipelines")["query"]["filter"])
    assert name_filter["predicates"][0]["stringValue"] == "transferline"
    upload = stub.request("POST", f"{API}/pipelines/upload")
    assert upload["query"]["name"] == "transferline"
    spec = _uploaded_spec(upload)
    assert "pipelineSpec" not in spec  # KFP takes the bare PipelineSpec
    assert spec["pipelineInfo"]["name"] == "transferline"
    assert spec["schemaVersion"] == "2.1.0"
    assert stub.request("POST", f"{API}/experiments")["json"]["display_name"] == "nightly"
    run = stub.request("POST", f"{API}/runs")["json"]
    assert run["display_name"] == "first run"
    assert run["experiment_id"] == "experiment-1"
    assert run["pipeline_version_reference"] == {
        "pipeline_id": "pipeline-1", "pipeline_version_id": "version-1"
    }
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    assert {r["authorization"] for r in stub.requests} == {f"Bearer {SECRET}"}
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "Uploaded new pipeline transferline (id pipeline-1)" in captured.out
    assert f"{stub.url}/#/runs/details/run-1" in captured.out


def test_submit_uploads_a_new_version_of_an_existing_pipeline(package, capsys):
    with RecordingKfpStub(existing_pipeline=True) as stub:
        assert cli.main(["submit", "--host", stub.url, "--package", package]) == 0

    assert ("POST", f"{API}/pipelines/upload") not in stub.calls()
    upload = stub.request("POST", f"{API}/pipelines/upload_version")
    assert upload["query"]["pipelineid"] == "pipeline-1"
    assert upload["query"]["name"].startswith("transferline-")
    assert _uploaded_spec(upload)["pipelineInfo"]["name"] == "transferline"
    run = stub.request("POST", f"{API}/runs")["json"]
    assert run["pipeline_version_reference"]["pipeline_version_id"] == "version-2"
    assert "new version of pipeline transferline" in capsys.readouterr().out


def test_submit_without_package_compiles_from_the_flags(tmp_path, data_root):
    with RecordingKfpStub() as stub:
        code = cli.main(["submit", "--host", stub.url, *_compile_flags(data_root),
                         "--pipeline-name", "flowers", "--pvc", "models:/mnt/models",
                         "--output", str(tmp_path / "kept.yaml")])

    assert code == 0
    upload = stub.request("POST", f"{API}/pipelines/upload")
    assert upload["query"]["name"] == "flowers"
    spec, platform = _uploaded_documents(upload)
    assert spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]["image"] == IMAGE
    pusher_mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "Pusher_executor"]["pvcMount"]
    assert pusher_mounts == [{"constant": "models", "mountPath": "/mnt/models"}]
    assert (tmp_path / "kept.yaml").exists()


def test_schedule_creates_a_recurring_run_with_kfp_cron(package, capsys):
    with RecordingKfpStub() as stub:
        code = cli.main(["schedule", "--host", stub.url, "--package", package,
                         "--cron", "0 3 * * *", "--job-name", "nightly-retrain"])

    assert code == 0
    assert stub.calls()[-1] == ("POST", f"{API}/recurringruns")
    assert ("POST", f"{API}/runs") not in stub.calls()
    body = stub.request("POST", f"{API}/recurringruns")["json"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["display_name"] == "nightly-retrain"
    assert body["mode"] == "ENABLE"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["pipeline_version_reference"]["pipeline_id"] == "pipeline-1"
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "cron '0 0 3 * * *'" in captured.out
    assert "at most 1 at once, no catch-up" in captured.out


def test_schedule_sends_the_given_concurrency(package, capsys):
    with RecordingKfpStub() as stub:
        assert cli.main(["schedule", "--host", stub.url, "--package", package,
                         "--cron", "0 3 * * *", "--max-concurrency", "3"]) == 0

    assert int(stub.request("POST", f"{API}/recurringruns")["json"]["max_concurrency"]) == 3
    assert "at most 3 at once" in capsys.readouterr().out


def test_bad_cron_fails_before_any_request(package, capsys):
    with RecordingKfpStub() as stub:
        code = cli.main(["schedule", "--host", stub.url, "--package", package,
                         "--cron", "0 3 * *"])

    assert code == 2
    assert stub.requests == []
    err = capsys.readouterr().err
    assert err.startswith("error: cron must have 5 fields") and err.count("\n") == 1


def test_refused_request_is_one_line(package, capsys):
    with RecordingKfpStub(deny_runs=True) as stub:
        code = cli.main(["submit", "--host", stub.url, "--package", package])

    assert code == 1
    err = capsys.readouterr().err
    assert err == (f"error: Kubeflow Pipelines at {stub.url} refused the request: "
                   "403 Forbidden: user may not create runs\n")


def test_login_page_instead_of_the_api_is_one_line(package, capsys):
    with RecordingKfpStub(login_page=True) as stub:
        code = cli.main(["submit", "--host", stub.url, "--package", package])

    assert code == 1
    assert ("POST", f"{API}/pipelines/upload") not in stub.calls()
    assert capsys.readouterr().err == (
        f"error: {stub.url} answered with text/html, not the Kubeflow Pipelines API "
        "(a login page?); check the URL and credentials\n"
    )


def test_service_account_token_file_is_sent_not_printed(package, tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-never-printed")
    monkeypatch.delenv(kfp_client.TOKEN_ENV)
    monkeypatch.setenv(kfp_client.SA_TOKEN_PATH_ENV, str(token_file))
    with RecordingKfpStub() as stub:
        assert cli.main(["submit", "--host", stub.url, "--package", package]) == 0

    assert {r["authorization"] for r in stub.requests} == {"Bearer file-token-never-printed"}
    captured = capsys.readouterr()
    assert "file-token-never-printed" not in captured.out + captured.err


def test_missing_token_file_is_one_line(package, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(kfp_client.TOKEN_ENV)
    monkeypatch.setenv(kfp_client.SA_TOKEN_PATH_ENV, str(tmp_path / "no-token"))
    with RecordingKfpStub() as stub:
        code = cli.main(["submit", "--host", stub.url, "--package", package])

    assert code == 1
    assert stub.requests == []
    assert capsys.readouterr().err == (
        f"error: cannot read the token file named by ${kfp_client.SA_TOKEN_PATH_ENV}: "
        "No such file or directory\n"
    )


def test_package_and_compile_flags_together_are_refused(package, data_root, capsys):
    code = cli.main(["submit", "--host", "http://127.0.0.1:9", "--package", package,
                     "--image", IMAGE])
    assert code == 2
    assert "--package is already compiled; drop --image" in capsys.readouterr().err


def test_package_and_training_flags_or_a_config_together_are_refused(package, tmp_path, capsys):
    code = cli.main(["schedule", "--host", "http://127.0.0.1:9", "--package", package,
                     "--cron", "0 3 * * *", "--epochs", "3", "--no-warm-start",
                     "--config", str(tmp_path / "any.yaml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "drop --config, --epochs, --no-warm-start (or drop --package" in err


def test_unreachable_host_is_a_one_line_error(package):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    env = {**os.environ, kfp_client.TOKEN_ENV: SECRET}

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", "--host", host, "--package", package],
        capture_output=True, text=True, env=env, timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot reach Kubeflow Pipelines at {host}: connection refused\n"
    )
    assert SECRET not in result.stdout + result.stderr
