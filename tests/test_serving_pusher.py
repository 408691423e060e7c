"""ServingPusher: blessed-only, complete-or-absent, idempotent versions."""

import json
import os
import shutil

import pytest
import tensorflow as tf
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import serving_pusher


@pytest.fixture
def saved_model(tmp_path):
    module = tf.Module()
    module.double = tf.function(
        lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    path = str(tmp_path / "trainer_model" / "Format-Serving")
    tf.saved_model.save(module, path, signatures={"serving_default": module.double})
    return path


def _push(saved_model, base_directory, tmp_path, blessed=True, model_uri=None):
    model = standard_artifacts.Model()
    model.uri = model_uri or os.path.dirname(saved_model)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed" / str(len(os.listdir(tmp_path))))
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_directory)
    )
    serving_pusher.Executor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination)},
    )
    return pushed


def test_blessed_model_is_pushed_as_a_loadable_version(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    pushed = _push(saved_model, base, tmp_path)
    assert pushed.get_int_custom_property("pushed") == 1
    (version,) = serving_pusher.list_versions(base)
    version_dir = os.path.join(base, str(version))
    assert pushed.get_string_custom_property("pushed_destination") == version_dir
    loaded = tf.saved_model.load(version_dir)
    assert loaded.signatures["serving_default"](tf.constant([1.0]))["y"].numpy().tolist() == [2.0]
    with open(os.path.join(version_dir, serving_pusher.SOURCE_FILE)) as f:
        assert json.load(f)["model_uri"] == os.path.dirname(saved_model)
    assert sorted(os.listdir(base)) == [str(version)]  # no temporary directory left behind


def test_unblessed_model_is_not_pushed(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    pushed = _push(saved_model, base, tmp_path, blessed=False)
    assert pushed.get_int_custom_property("pushed") == 0
    assert serving_pusher.list_versions(base) == []


def test_the_same_model_is_not_pushed_twice(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    _push(saved_model, base, tmp_path)
    again = _push(saved_model, base, tmp_path)
    (version,) = serving_pusher.list_versions(base)
    assert again.get_int_custom_property("pushed") == 0
    assert again.get_int_custom_property(serving_pusher.ALREADY_SERVING_PROPERTY) == version


def test_versions_never_collide(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    other_model = tmp_path / "other_model"
    shutil.copytree(os.path.dirname(saved_model), other_model)
    _push(saved_model, base, tmp_path)
    _push(saved_model, base, tmp_path, model_uri=str(other_model))  # within the same second
    first, second = serving_pusher.list_versions(base)
    assert second > first


def test_incomplete_directories_are_not_versions(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    (base / "123").mkdir(parents=True)  # no saved_model.pb: interrupted copy
    (base / ".124.incomplete").mkdir()
    assert serving_pusher.list_versions(str(base)) == []
    assert serving_pusher.next_version(str(base)) > 124
