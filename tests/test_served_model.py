"""ServedModel: the newest complete served version, copied into a Model artifact, or
a record that nothing is served; a version the Evaluator cannot score is refused."""

import pathlib
import shutil

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components import served_model
from tests import pusher_testing, serving_testing


def _trainer_output(tmp_path: pathlib.Path, name: str) -> str:
    """A Trainer Model artifact's folder: the tiny SavedModel with a warm-start checkpoint."""
    uri = tmp_path / "trainer" / name
    shutil.copytree(serving_testing.shared_tiny_model(), uri / "Format-Serving")
    warm_start = uri / "Format-Serving" / "assets.extra" / "warm_start"
    warm_start.mkdir(parents=True)
    (warm_start / "manifest.json").write_text(f'{{"model": "{name}"}}')
    return str(uri)


def _push(tmp_path: pathlib.Path, serving: pathlib.Path, name: str) -> None:
    pusher_testing.execute_push(
        _trainer_output(tmp_path, name), str(serving),
        str(tmp_path / "pushed" / name), str(tmp_path / "blessing" / name))


def _read(serving: pathlib.Path, out: pathlib.Path, role: str = "baseline"):
    model = standard_artifacts.Model()
    model.uri = str(out)
    served_model.Executor().Do(
        {}, {"model": [model]}, {"serving_model_dir": str(serving), "role": role})
    return model


def test_nothing_served_yet_is_recorded_and_holds_no_model(tmp_path):
    model = _read(tmp_path / "serving" / "m", tmp_path / "out")

    assert model.get_int_custom_property("served_version") == -1
    assert served_model.holds_no_version(model)
    assert not (tmp_path / "out" / "Format-Serving").exists()


def test_the_newest_version_is_copied_with_its_warm_start_checkpoint(tmp_path):
    serving = tmp_path / "serving" / "m"
    _push(tmp_path, serving, "first")
    _push(tmp_path, serving, "second")
    first, second = sorted(int(p.name) for p in serving.iterdir() if p.name.isdigit())
    (serving / "99999999999").mkdir()  # incomplete: no saved_model.pb, so not a version

    model = _read(serving, tmp_path / "out")

    assert model.get_int_custom_property("served_version") == second
    assert model.get_string_custom_property("served_from") == str(serving / str(second))
    assert not served_model.holds_no_version(model)
    copy = tmp_path / "out" / "Format-Serving"
    assert (copy / "assets.extra" / "warm_start" / "manifest.json").read_text() == (
        '{"model": "second"}')
    loaded = tf.saved_model.load(str(copy))
    assert "serving_examples" in loaded.signatures


def test_an_unreadable_served_version_stops_the_baseline_naming_it(tmp_path):
    serving = tmp_path / "serving" / "m"
    _push(tmp_path, serving, "first")
    (version,) = list(serving.glob("[0-9]*"))
    (version / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a proto")

    with pytest.raises(served_model.UnscoreableServedModel) as refused:
        _read(serving, tmp_path / "out")
    assert str(refused.value) == (
        f"served version {version} cannot be the baseline: unreadable "
        f"{version / 'saved_model.pb'} (DecodeError); remove or repair that version, or compile "
        "with --no-baseline")
    # As a warm-start source the same version is only copied (its checkpoint is intact).
    assert _read(serving, tmp_path / "warm", role="warm_start").get_int_custom_property(
        "served_version") == int(version.name)


def test_a_version_without_the_examples_signature_is_refused(tmp_path):
    serving = tmp_path / "serving" / "m"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(serving / "3"), signatures={"serving_default": module.f})

    with pytest.raises(served_model.UnscoreableServedModel, match=(
            r"served version .*/m/3 cannot be the baseline: no 'serving_examples' signature "
            r"taking 'examples' \(it has \['serving_default'\]\)")):
        _read(serving, tmp_path / "out")


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role must be one of"):
        served_model.ServedModel(serving_model_dir="/s/m", role="judge")


def test_the_served_version_reads_back_from_ml_metadata_properties():
    assert served_model.served_version({"served_version": 4, "served_from": "/s/m/4"}) == 4
    assert served_model.served_version({"served_version": -1}) is None
    assert served_model.served_version({}) is None
