"""KubeflowConfig: the cluster settings, and the checks that refuse impossible ones."""

from __future__ import annotations

import pytest

from pipeline.kubeflow_settings import DEFAULT_BEAM_ARGS, KubeflowConfig
from pipeline.names import MODEL_NAME, PIPELINE_NAME

IMAGE = "registry.example.com/transferline:1.2.3"


def _config(data: str, **overrides) -> KubeflowConfig:
    settings = dict(
        image=IMAGE, pipeline_root="gs://bucket/transferline/root", data_root=data,
        serving_dir="gs://bucket/serving", model_name="flowers", trainer_gpus=1,
        trainer_gpu_type="nvidia.com/gpu",
    )
    return KubeflowConfig(**{**settings, **overrides})


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




def test_defaults_are_the_shared_names_and_beam_args():
    config = KubeflowConfig()
    assert (config.model_name, config.pipeline_name) == (MODEL_NAME, PIPELINE_NAME)
    assert MODEL_NAME == PIPELINE_NAME == "transferline"
    assert config.beam_pipeline_args == DEFAULT_BEAM_ARGS == (
        "--direct_running_mode=multi_processing", "--direct_num_workers=0")


def test_lists_become_tuples():
    config = KubeflowConfig(beam_pipeline_args=["--runner=FlinkRunner"], pvc_mounts=["a:/b"])
    assert config.beam_pipeline_args == ("--runner=FlinkRunner",)
    assert config.volume_mounts == {"/b": "a"}
