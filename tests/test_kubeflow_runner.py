"""Compiling for Kubeflow: the KFP v2 package holds the local pipeline, sized and imaged."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.config import IngestConfig
from pipeline import kubeflow_runner
from pipeline import pipeline as transferline
from pipeline.kubeflow_runner import KubeflowConfig
from trainer.config import TrainingConfig
from trainer.config_file import build_config

IMAGE = "registry.example.com/transferline:1.2.3"
BEAM_ARGS = ("--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--parallelism=4")
TFX_COMMAND = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


def _config(data: str, **overrides) -> KubeflowConfig:
    settings = dict(
        image=IMAGE, pipeline_root="gs://bucket/transferline/root", data_root=data,
        serving_dir="gs://bucket/serving", model_name="flowers", trainer_gpus=1,
        trainer_gpu_type="nvidia.com/gpu", beam_pipeline_args=BEAM_ARGS,
    )
    return KubeflowConfig(**{**settings, **overrides})


def _compile(tmp_path, data_root, name="pipeline.json", **overrides):
    output = str(tmp_path / "out" / name)
    kubeflow_runner.compile_pipeline(output, config=_config(data_root, **overrides))
    return output


def _executors(spec: dict) -> dict[str, dict]:
    return kubeflow_runner.CompiledPackage(spec=spec, pipeline_root=None).tasks()


def _container_names() -> set[str]:
    return set(transferline.NODE_IDS) - set(transferline.RESOLVER_IDS)


def _expected_task_names() -> set[str]:
    """NODE_IDS as KFP task names: no warm-start resolver (warm start is off on
    Kubeflow); the baseline Resolver compiles to two resolver tasks."""
    return _container_names() | {f"{transferline.BASELINE_RESOLVER}-model-resolver",
                                 f"{transferline.BASELINE_RESOLVER}-model-blessing-resolver"}


# ----------------------------------------------------------------------- compile


def test_compiles_a_pipeline_job_holding_every_node(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        document = json.load(f)

    job = json_format.ParseDict(document, pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(document["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert job.runtime_config.gcs_output_directory == "gs://bucket/transferline/root"
    assert spec.default_pipeline_root == "gs://bucket/transferline/root"
    assert spec.schema_version == "2.1.0"
    assert spec.pipeline_info.name == kubeflow_runner.PIPELINE_NAME
    assert set(spec.root.dag.tasks) == _expected_task_names()


def test_every_container_runs_the_image_with_tfx_entrypoint(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        executors = _executors(json.load(f)["pipelineSpec"])

    containers = {name: e["container"] for name, e in executors.items() if "container" in e}
    assert set(containers) == _container_names()
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        assert container["command"] == TFX_COMMAND, name


def test_gpus_go_to_the_trainer_only_and_other_nodes_get_requests(tmp_path, data_root):
    with open(_compile(tmp_path, data_root, trainer_gpus=2, trainer_cpu=8,
                       trainer_memory_gb=30, node_cpu=2, node_memory_gb=6)) as f:
        executors = _executors(json.load(f)["pipelineSpec"])

    trainer = executors[transferline.TRAINER]["container"]["resources"]
    assert trainer["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
    assert (trainer["cpuLimit"], trainer["memoryLimit"]) == (8, 30)
    for name, executor in executors.items():
        if name == transferline.TRAINER or "container" not in executor:
            continue
        resources = executor["container"]["resources"]  # ExampleGen included
        assert "accelerator" not in resources, name
        assert (resources["cpuRequest"], resources["memoryRequest"]) == (2, 6), name


def test_no_gpu_requested_when_gpus_is_zero(tmp_path, data_root):
    with open(_compile(tmp_path, data_root, trainer_gpus=0)) as f:
        text = f.read()
    assert "accelerator" not in text


def test_beam_args_pass_through_to_every_container(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        executors = _executors(json.load(f)["pipelineSpec"])

    for name, executor in executors.items():
        if "container" in executor:
            assert executor["container"]["args"][-len(BEAM_ARGS):] == list(BEAM_ARGS), name
    example_gen_driver = executors[transferline.EXAMPLE_GEN]["container"]["lifecycle"]
    assert example_gen_driver["preCacheCheck"]["args"][-len(BEAM_ARGS):] == list(BEAM_ARGS)


def test_paths_reach_the_example_gen_and_pusher(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]

    def parameter(task, name):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constant"]

    assert parameter(transferline.EXAMPLE_GEN, "input_base") == data_root
    assert "gs://bucket/serving/flowers" in parameter(transferline.PUSHER, "push_destination")


def test_yaml_output_is_the_bare_pipeline_spec_kfp_uploads(tmp_path, data_root):
    path = _compile(tmp_path, data_root, name="pipeline.yaml")
    with open(path) as f:
        document = yaml.safe_load(f)

    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    assert set(spec.root.dag.tasks) == _expected_task_names()
    package = kubeflow_runner.load_package(path)
    assert package.pipeline_root == "gs://bucket/transferline/root"
    assert package.name == kubeflow_runner.PIPELINE_NAME


def test_pvc_mounts_reach_every_container_through_the_platform_spec(tmp_path, data_root):
    mounts = ("images:/mnt/images", "models.shared:/mnt/models")
    path = _compile(tmp_path, data_root, name="pipeline.yml", pvc_mounts=mounts)
    with open(path) as f:
        spec, platform = yaml.safe_load_all(f)

    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = {label for label, e in spec["deploymentSpec"]["executors"].items()
                  if "container" in e}
    assert set(executors) == containers
    for executor in executors.values():
        assert executor["pvcMount"] == [
            {"constant": "images", "mountPath": "/mnt/images"},
            {"constant": "models.shared", "mountPath": "/mnt/models"},
        ]
    assert kubeflow_runner.load_package(path).platform_spec == platform


def test_pvc_mounts_need_a_yaml_package(tmp_path, data_root):
    with pytest.raises(ValueError, match="pvc_mounts need a .yaml package"):
        _compile(tmp_path, data_root, pvc_mounts=("images:/mnt/images",))


def test_object_store_data_root_compiles_without_listing(tmp_path):
    config = _config("gs://no-such-bucket-transferline/images", layout="presplit")
    job = kubeflow_runner.compile_pipeline(str(tmp_path / "pipeline.json"), config=config)

    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    parameters = tasks[transferline.EXAMPLE_GEN]["inputs"]["parameters"]
    input_config = json.loads(parameters["input_config"]["runtimeValue"]["constant"])
    assert [s["pattern"] for s in input_config["splits"]] == ["train/*", "val/*"]
    assert parameters["input_base"]["runtimeValue"]["constant"] == config.data_root


def _eval_config(tasks: dict) -> dict:
    parameters = tasks[transferline.EVALUATOR]["inputs"]["parameters"]
    return json.loads(parameters["eval_config"]["runtimeValue"]["constant"])


def test_without_baseline_no_resolver_and_no_change_threshold(tmp_path, data_root):
    for name, overrides in (("default.json", {}), ("no_baseline.json", {"baseline": False})):
        with open(_compile(tmp_path, data_root, name=name, **overrides)) as f:
            document = json.load(f)
        spec = json_format.ParseDict(document["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
        tasks = document["pipelineSpec"]["root"]["dag"]["tasks"]
        threshold = _eval_config(tasks)["metrics_specs"][0]["metrics"][0]["per_slice_thresholds"][0]
        if overrides:
            assert set(spec.root.dag.tasks) == _container_names()
            assert "baseline_model" not in tasks[transferline.EVALUATOR]["inputs"]["artifacts"]
            assert set(threshold["threshold"]) == {"value_threshold"}
        else:
            assert set(spec.root.dag.tasks) == _expected_task_names()
            assert "baseline_model" in tasks[transferline.EVALUATOR]["inputs"]["artifacts"]
            assert set(threshold["threshold"]) == {"value_threshold", "change_threshold"}


def test_the_compiled_trainer_trains_from_scratch(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    trainer = tasks[transferline.TRAINER]["inputs"]
    assert "base_model" not in trainer["artifacts"]
    custom_config = json.loads(trainer["parameters"]["custom_config"]["runtimeValue"]["constant"])
    assert custom_config["warm_start"] is False


def _span_folder(tmp_path) -> str:
    for label in ("cat", "dog"):
        (tmp_path / "spans" / "span-1" / label).mkdir(parents=True)
        (tmp_path / "spans" / "span-1" / label / "1.png").write_bytes(b"not read")
    return str(tmp_path / "spans")


def test_a_span_window_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"ingest.span_window 2 does not compile for Kubeflow"):
        kubeflow_runner.compile_pipeline(
            str(tmp_path / "p.json"), config=_config(_span_folder(tmp_path)),
            ingest=IngestConfig(span_window=2))


def test_spans_compile_but_the_data_gate_sees_this_run_s_statistics_only(tmp_path):
    """KFP v2 has no cross-run channel: previous_statistics becomes this run's output,
    so the comparison with the previous span happens only under LocalDagRunner."""
    job = kubeflow_runner.compile_pipeline(
        str(tmp_path / "p.json"), config=_config(_span_folder(tmp_path)))
    gate = job["pipelineSpec"]["root"]["dag"]["tasks"][transferline.DATA_GATE]["inputs"]
    assert gate["artifacts"]["previous_statistics"] == {"taskOutputArtifact": {
        "outputArtifactKey": "statistics", "producerTask": transferline.STATISTICS_GEN}}


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": ""}, "image must name a container image"),
        ({"trainer_gpus": -1}, "trainer_gpus must be a whole number >= 0"),
        ({"trainer_gpus": 1, "trainer_gpu_type": " "}, "trainer_gpu_type must name"),
        ({"pipeline_root": "relative/root"}, "pipeline_root must be an object-store URI"),
        ({"serving_dir": "minio://bucket/serving"}, "serving_dir scheme minio://"),
        ({"data_root": "gs://bucket/images"}, "layout must be given"),
        ({"layout": "flat"}, "layout must be one of"),
        ({"model_name": "my/model"}, "model_name must be"),
        ({"pipeline_name": "Transferline"}, "pipeline_name must be lower-case"),
        ({"node_memory_gb": 0}, "node_memory_gb must be a number > 0"),
        ({"beam_pipeline_args": ("runner=FlinkRunner",)}, "must be Beam flags"),
        ({"beam_pipeline_args": ("--runner=DataflowRunner",)}, "DataflowRunner also need"),
        ({"pvc_mounts": ("Images:/mnt",)}, "pvc_mounts entries must be CLAIM:/mount/path"),
        ({"pvc_mounts": ("images:mnt",)}, "pvc_mounts entries must be CLAIM:/mount/path"),
    ],
)
def test_validate_names_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config("/mnt/data", **overrides).validate()


def test_valid_settings_pass():
    assert _config("/mnt/data").validate().serving_model_dir == "gs://bucket/serving/flowers"


def test_compile_refuses_a_folder_it_cannot_list_for_auto_layout(tmp_path):
    with pytest.raises(ValueError, match="layout 'auto' needs it"):
        kubeflow_runner.compile_pipeline(
            str(tmp_path / "p.json"), config=_config(str(tmp_path / "missing"))
        )


def test_compile_refuses_an_unknown_package_extension(tmp_path, data_root):
    with pytest.raises(ValueError, match=r"must end with \.json, \.yaml or \.yml"):
        kubeflow_runner.compile_pipeline(str(tmp_path / "p.txt"), config=_config(data_root))


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("*/15 * * * 1-5", "0 */15 * * * 1-5"),
        ("30 0 3 * * *", "30 0 3 * * *"),
        ("  0   3 1 * *  ", "0 0 3 1 * *"),
    ],
)
def test_cron_gets_kfp_seconds_field(cron, expected):
    assert kubeflow_runner.normalize_cron(cron) == expected


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * *", "must have 5 fields"),
        ("0 0 3 * * * 2030", "must have 5 fields"),
        ("61 3 * * *", "minute must be in 0-59"),
        ("0 24 * * *", "hour must be in 0-23"),
        ("0 3 * * $", "characters cron does not use"),
        ("", "got 0"),
    ],
)
def test_bad_cron_is_refused(cron, message):
    with pytest.raises(ValueError, match=message):
        kubeflow_runner.normalize_cron(cron)


# ------------------------------------------------------------------- config file


def test_config_file_sections_become_settings(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "kubeflow:\n  image: reg/img:1\n  trainer_gpus: 1\n  trainer_memory_gb: 24\n"
        "  beam_pipeline_args: [--runner=FlinkRunner]\n"
        "training:\n  epochs: 3\n  learning_rate: 1e-4\n"
        "gate:\n  min_accuracy: 0.8\n"
    )
    sections = kubeflow_runner.read_config_file(str(path))
    config = build_config(KubeflowConfig, sections["kubeflow"])
    assert config.beam_pipeline_args == ("--runner=FlinkRunner",)
    assert config.trainer_memory_gb == 24.0 and isinstance(config.trainer_memory_gb, float)
    training = build_config(TrainingConfig, sections["training"])
    assert (training.epochs, training.learning_rate) == (3, 1e-4)  # YAML's '1e-4' string too
    assert sections["gate"] == {"min_accuracy": 0.8}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cluster:\n  image: x\n", "unknown sections"),
        ("kubeflow:\n  gpus: 1\n", "kubeflow.gpus: unknown setting; kubeflow settings are"),
        ("kubeflow:\n  trainer_cpu: many\n", "kubeflow.trainer_cpu: expected a number"),
        ("kubeflow:\n  baseline: no-way\n", "kubeflow.baseline: expected true or false"),
        ("training:\n  epochs: ten\n", "training.epochs: expected a whole number"),
        ("- a\n- b\n", "must map sections"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        kubeflow_runner.read_config_file(str(path))
