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
from pipeline import kubeflow_compile
from pipeline import pipeline as transferline
from pipeline.kubeflow_settings import KubeflowConfig
from pipeline.names import PIPELINE_NAME
from tests.conftest import DEFAULT_NODE_IDS

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
    kubeflow_compile.compile_pipeline(output, config=_config(data_root, **overrides))
    return output


def _executors(spec: dict) -> dict[str, dict]:
    return kubeflow_compile.CompiledPackage(spec=spec, pipeline_root=None).tasks()


def _container_names() -> set[str]:
    return set(DEFAULT_NODE_IDS)  # the default settings: no Tuner


def _expected_task_names() -> set[str]:
    """NODE_IDS as KFP task names: every node a container, no resolver task."""
    return _container_names()


# ----------------------------------------------------------------------- compile


def test_compiles_a_pipeline_job_holding_every_node(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        document = json.load(f)

    job = json_format.ParseDict(document, pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(document["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert job.runtime_config.gcs_output_directory == "gs://bucket/transferline/root"
    assert spec.default_pipeline_root == "gs://bucket/transferline/root"
    assert spec.schema_version == "2.1.0"
    assert spec.pipeline_info.name == PIPELINE_NAME
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
    package = kubeflow_compile.load_package(path)
    assert package.pipeline_root == "gs://bucket/transferline/root"
    assert package.name == PIPELINE_NAME


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
    assert kubeflow_compile.load_package(path).platform_spec == platform


def test_pvc_mounts_need_a_yaml_package(tmp_path, data_root):
    with pytest.raises(ValueError, match="pvc_mounts need a .yaml package"):
        _compile(tmp_path, data_root, pvc_mounts=("images:/mnt/images",))


def test_object_store_data_root_compiles_without_listing(tmp_path):
    config = _config("gs://no-such-bucket-transferline/images", layout="presplit")
    job = kubeflow_compile.compile_pipeline(str(tmp_path / "pipeline.json"), config=config)

    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    parameters = tasks[transferline.EXAMPLE_GEN]["inputs"]["parameters"]
    input_config = json.loads(parameters["input_config"]["runtimeValue"]["constant"])
    assert [s["pattern"] for s in input_config["splits"]] == ["train/*", "val/*"]
    assert parameters["input_base"]["runtimeValue"]["constant"] == config.data_root


def _eval_config(tasks: dict) -> dict:
    parameters = tasks[transferline.EVALUATOR]["inputs"]["parameters"]
    return json.loads(parameters["eval_config"]["runtimeValue"]["constant"])


def test_the_baseline_is_the_served_version_with_the_change_threshold_kept(tmp_path, data_root):
    for name, overrides in (("default.json", {}), ("no_baseline.json", {"baseline": False})):
        with open(_compile(tmp_path, data_root, name=name, **overrides)) as f:
            document = json.load(f)
        tasks = document["pipelineSpec"]["root"]["dag"]["tasks"]
        executors = _executors(document["pipelineSpec"])
        assert not any("resolver" in executor for executor in executors.values()), name
        threshold = _eval_config(tasks)["metrics_specs"][0]["metrics"][0]["per_slice_thresholds"][0]
        evaluator_inputs = tasks[transferline.EVALUATOR]["inputs"]["artifacts"]
        if overrides:
            assert "ServingBaseline" not in tasks
            assert "baseline_model" not in evaluator_inputs
            assert set(threshold["threshold"]) == {"value_threshold"}
        else:
            assert evaluator_inputs["baseline_model"]["taskOutputArtifact"] == {
                "producerTask": "ServingBaseline", "outputArtifactKey": "model"}
            assert set(threshold["threshold"]) == {"value_threshold", "change_threshold"}
            assert threshold["threshold"]["change_threshold"]["absolute"] == pytest.approx(-0.01)
            baseline = tasks["ServingBaseline"]["inputs"]["parameters"]
            assert baseline["serving_model_dir"]["runtimeValue"]["constant"] == (
                "gs://bucket/serving/flowers")
            assert baseline["role"]["runtimeValue"]["constant"] == "baseline"


def test_the_compiled_trainer_warm_starts_from_the_served_version(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    trainer = tasks[transferline.TRAINER]["inputs"]
    assert trainer["artifacts"]["base_model"]["taskOutputArtifact"] == {
        "producerTask": "WarmStartModel", "outputArtifactKey": "model"}
    assert tasks["WarmStartModel"]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"][
        "producerTask"] == transferline.EXAMPLE_GEN
    custom_config = json.loads(trainer["parameters"]["custom_config"]["runtimeValue"]["constant"])
    assert custom_config["warm_start"] is True


def test_no_warm_start_compiles_no_reader_and_trains_from_scratch(tmp_path, data_root):
    from trainer.config import TrainingConfig

    output = str(tmp_path / "cold.json")
    kubeflow_compile.compile_pipeline(output, config=_config(data_root),
                                      training=TrainingConfig(warm_start=False))
    with open(output) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "WarmStartModel" not in tasks
    assert "base_model" not in tasks[transferline.TRAINER]["inputs"]["artifacts"]


def test_kfp_cache_is_off_for_the_tasks_reading_outside_state(tmp_path, data_root):
    with open(_compile(tmp_path, data_root)) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    uncached = {name for name, task in tasks.items() if "cachingOptions" not in task}
    assert uncached == {"ImageFolderExampleGen", "ServingBaseline"}
    assert tasks[transferline.TRAINER]["cachingOptions"] == {"enableCache": True}
    with open(_compile(tmp_path, data_root, name="no_cache.json", enable_cache=False)) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]
    assert not any("cachingOptions" in task for task in tasks.values())


def _span_folder(tmp_path) -> str:
    for label in ("cat", "dog"):
        (tmp_path / "spans" / "span-1" / label).mkdir(parents=True)
        (tmp_path / "spans" / "span-1" / label / "1.png").write_bytes(b"not read")
    return str(tmp_path / "spans")


def test_a_span_window_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"ingest.span_window 2 does not compile for Kubeflow"):
        kubeflow_compile.compile_pipeline(
            str(tmp_path / "p.json"), config=_config(_span_folder(tmp_path)),
            ingest=IngestConfig(span_window=2))


def test_spans_compile_but_the_data_gate_sees_this_run_s_statistics_only(tmp_path):
    """KFP v2 has no cross-run channel: previous_statistics becomes this run's output,
    so the comparison with the previous span happens only under LocalDagRunner."""
    job = kubeflow_compile.compile_pipeline(
        str(tmp_path / "p.json"), config=_config(_span_folder(tmp_path)))
    gate = job["pipelineSpec"]["root"]["dag"]["tasks"][transferline.DATA_GATE]["inputs"]
    assert gate["artifacts"]["previous_statistics"] == {"taskOutputArtifact": {
        "outputArtifactKey": "statistics", "producerTask": transferline.STATISTICS_GEN}}


# ------------------------------------------------------------------- refusals


def test_compile_refuses_a_folder_it_cannot_list_for_auto_layout(tmp_path):
    with pytest.raises(ValueError, match="layout 'auto' needs it"):
        kubeflow_compile.compile_pipeline(
            str(tmp_path / "p.json"), config=_config(str(tmp_path / "missing"))
        )


def test_compile_refuses_an_unknown_package_extension(tmp_path, data_root):
    with pytest.raises(ValueError, match=r"must end with \.json, \.yaml or \.yml"):
        kubeflow_compile.compile_pipeline(str(tmp_path / "p.txt"), config=_config(data_root))
