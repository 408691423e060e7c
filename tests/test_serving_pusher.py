"""ServingPusher: blessed-only, complete-or-absent, idempotent versions, kept to K,
with warm-up requests and TF Serving's models.config."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from components import model_card, serving_pusher
from tests import pusher_testing, serving_testing
from trainer import export
from trainer.config import ExportConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def saved_model(tmp_path):
    module = tf.Module()
    module.double = tf.function(
        lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    path = str(tmp_path / "trainer_model" / "Format-Serving")
    tf.saved_model.save(module, path, signatures={"serving_default": module.double})
    return path


def _push(saved_model, base_directory, tmp_path, blessed=True, model_uri=None, keep=None):
    return pusher_testing.execute_push(
        model_uri or os.path.dirname(saved_model), base_directory,
        str(tmp_path / "pushed" / str(len(os.listdir(tmp_path)))), str(tmp_path / "blessing"),
        blessed=blessed, keep=keep,
    )


def _card(model_path, base_directory, model_uri):
    """The card of a version about to be pushed, as the Pusher makes it without an evaluation."""
    return model_card.version_facts(
        model_path=str(model_path), model_uri=model_uri,
        serving_path=os.path.join(base_directory, "0"), pushed_at=None, evaluation=None,
        blessed=None, baseline_model=None,
    )


def _copy_of(saved_model, tmp_path, name):
    """The same SavedModel as another Trainer output (another model URI)."""
    other = tmp_path / name
    shutil.copytree(os.path.dirname(saved_model), other)
    return str(other)


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
    assert sorted(os.listdir(base)) == [".version-high-water", str(version)]  # nothing temporary


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
    _push(saved_model, base, tmp_path)
    _push(saved_model, base, tmp_path, model_uri=_copy_of(saved_model, tmp_path, "other"))
    first, second = serving_pusher.list_versions(base)  # within the same second
    assert second > first


def test_a_version_taken_by_a_concurrent_push_is_left_alone(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    taken = serving_pusher.next_version(str(base))
    shutil.copytree(saved_model, base / str(taken))  # another pusher renamed first

    path = serving_pusher.push_model(saved_model, str(base), taken, "uri-b")

    assert int(os.path.basename(path)) > taken
    assert not (base / str(taken) / serving_pusher.SOURCE_FILE).exists()  # untouched
    assert serving_pusher.list_versions(str(base)) == [taken, int(os.path.basename(path))]


def test_incomplete_directories_are_not_versions(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    (base / "9999999999").mkdir(parents=True)  # no saved_model.pb: an object-store copy
    (base / ".incomplete-0a1b2c3d").mkdir()
    assert serving_pusher.list_versions(str(base)) == []
    assert serving_pusher.next_version(str(base)) == 10000000000  # above it all the same


def test_only_the_newest_versions_are_kept(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    pushed = [
        _push(saved_model, base, tmp_path, model_uri=_copy_of(saved_model, tmp_path, f"m{n}"),
              keep=2)
        for n in range(4)
    ]
    versions = serving_pusher.list_versions(base)
    newest = int(pushed[-1].get_string_custom_property("pushed_version"))
    assert len(versions) == 2 and versions[-1] == newest
    assert sorted(os.listdir(base)) == [".version-high-water"] + [str(v) for v in versions]


def test_prune_never_deletes_the_protected_version(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    for version in (10, 20, 30):
        shutil.copytree(saved_model, base / str(version))
    assert serving_pusher.prune_versions(str(base), keep=1, protect=10) == [20]
    assert serving_pusher.list_versions(str(base)) == [10, 30]


def test_models_config_lists_every_served_model(saved_model, tmp_path):
    serving_dir = tmp_path / "serving"
    _push(saved_model, str(serving_dir / "cats"), tmp_path)
    _push(saved_model, str(serving_dir / "dogs"), tmp_path)
    (serving_dir / "empty").mkdir()

    config = text_format.Parse(
        (serving_dir / serving_pusher.MODELS_CONFIG_FILE).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )

    models = config.model_config_list.config
    assert [(m.name, m.base_path, m.model_platform) for m in models] == [
        ("cats", str(serving_dir / "cats"), "tensorflow"),
        ("dogs", str(serving_dir / "dogs"), "tensorflow"),
    ]


def test_warmup_requests_replay_against_the_pushed_model(tmp_path):
    model_dir = serving_testing.shared_tiny_model()  # only copied by the push
    version_dir = serving_pusher.push_model(model_dir, str(tmp_path / "serving" / "m"), 1, "uri")

    records = list(tf.data.TFRecordDataset(
        os.path.join(version_dir, serving_pusher.WARMUP_FILE)).as_numpy_iterator())
    serve = tf.saved_model.load(version_dir).signatures[export.SERVING_DEFAULT]
    batch_sizes = []
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert request.model_spec.name == "m"
        assert request.model_spec.signature_name == export.SERVING_DEFAULT
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = serve(**inputs)
        batch_sizes.append(int(outputs[export.LABEL_OUTPUT].shape[0]))
    assert batch_sizes == list(serving_pusher.WARMUP_BATCH_SIZES)


_PUSH_SCRIPT = """
import sys
from components import model_card, serving_pusher
serving_pusher.push_model(sys.argv[1], sys.argv[2], 123, "uri")
"""


def test_an_interrupted_push_leaves_no_version_tf_serving_would_load(saved_model, tmp_path):
    # A FIFO in the model makes the copy block mid-way, deterministically; the
    # pushing process is then killed, as a crash or a preemption would.
    os.mkfifo(os.path.join(saved_model, "variables", "zz_blocks_the_copy"))
    base = tmp_path / "serving" / "m"
    base.mkdir(parents=True)
    push = subprocess.Popen(
        [sys.executable, "-c", _PUSH_SCRIPT, saved_model, str(base)],
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(base.glob(".incomplete-*/variables")):
            assert push.poll() is None, "the push ended instead of blocking mid-copy"
            assert time.monotonic() < deadline, "the push never started copying"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        push.send_signal(signal.SIGKILL)
        push.wait()

    (leftover,) = os.listdir(base)
    assert leftover.startswith(".incomplete-")  # not an integer: TF Serving skips it
    assert serving_pusher.list_versions(str(base)) == []


def test_each_version_carries_its_model_card_and_still_loads(saved_model, tmp_path):
    base = str(tmp_path / "serving" / "m")
    pushed = _push(saved_model, base, tmp_path)
    version_dir = pushed.get_string_custom_property("pushed_destination")
    version = os.path.basename(version_dir)

    card = (tmp_path / "serving" / "m" / version / serving_pusher.MODEL_CARD_FILE).read_text()

    assert card.startswith(f"# Model card: m, version {version}\n")
    assert f"| Serving directory | `{version_dir}` |" in card
    assert f"| Source model artifact | `{os.path.dirname(saved_model)}` |" in card
    assert "| `serving_default` | x: float32 [None] | y: float32 [None] |" in card
    assert "The Evaluator's decision: **blessed**" in card
    assert "Eval-split accuracy: **n/a**" in card  # no evaluation given
    loaded = tf.saved_model.load(version_dir)  # the card is no obstacle to loading
    assert loaded.signatures["serving_default"](tf.constant([2.0]))["y"].numpy().tolist() == [4.0]


def test_the_card_describes_an_exported_model_from_its_training_record(tmp_path):
    tf_transform_output, _ = serving_testing.shared_transform_output()
    record = {"config": serving_testing.CONFIG.to_dict(),
              "history": {"unfrozen_layers": ["block_16_project"]}}
    model_dir = serving_testing.export_tiny_model(
        tmp_path / "model", tf_transform_output, ExportConfig(tflite=True),
        training_record=record,
    )
    card = _card(model_dir, tmp_path / "serving" / "m", "uri-7")

    version_dir = serving_pusher.push_model(model_dir, str(tmp_path / "serving" / "m"), 5,
                                            "uri-7", card)

    tflite = os.path.join(version_dir, export.ASSETS_EXTRA, export.TFLITE_FILE)
    assert os.path.getsize(tflite) > 0  # pushed beside the SavedModel
    served = tf.saved_model.load(version_dir).signatures[export.SERVING_DEFAULT](
        image_bytes=tf.constant([serving_testing.colour_image("red", 1)]))
    assert served[export.SCORES_OUTPUT].shape == (1, 3)

    text = open(os.path.join(version_dir, serving_pusher.MODEL_CARD_FILE)).read()
    assert "| Classes | 3: red, green, blue |" in text
    assert "| Input size | 32 x 32 RGB |" in text
    assert "mobilenet_v2 backbone (top 1 layers fine-tuned) + new head" in text
    assert "`weights=none`" in text and "random initialisation" in text
    assert "| `serving_default` | image_bytes: string [None] |" in text
    assert "The Evaluator's decision: not recorded" in text  # no blessing given
    assert "`uri-7`" in text


def test_the_card_names_the_version_a_concurrent_push_left_free(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    taken = serving_pusher.next_version(str(base))
    shutil.copytree(saved_model, base / str(taken))
    card = _card(saved_model, base, "uri-b")

    path = serving_pusher.push_model(saved_model, str(base), taken, "uri-b", card)

    version = os.path.basename(path)
    assert int(version) > taken
    text = open(os.path.join(path, serving_pusher.MODEL_CARD_FILE)).read()
    assert text.startswith(f"# Model card: m, version {version}\n")
    assert f"/versions/{version}:predict" in text


def _release_when_read(fifo, stop):
    """Lets every reader of `fifo` through (an empty read) until `stop` is set."""
    while not stop.is_set():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody is reading it now
            time.sleep(0.02)


def test_concurrent_pushes_take_fresh_numbers_above_every_version(saved_model, tmp_path):
    # Four processes push six models each into one model directory, keeping 2.
    # The first push of worker 0 is held mid-copy (a FIFO in its model) until
    # the other 18 pushes are done and pruned: it must still land above them.
    base = str(tmp_path / "serving" / "m")
    models = [_copy_of(saved_model, tmp_path, f"model-{n:02d}") for n in range(24)]
    fifo = os.path.join(models[0], "Format-Serving", "variables", "zz_holds_the_copy")
    os.mkfifo(fifo)
    series = [models[n * 6:(n + 1) * 6] for n in range(4)]
    stop = threading.Event()
    with pusher_testing.worker_pool(4) as pool:
        held = pool.apply_async(pusher_testing.push_each, (series[0], base, str(tmp_path), 2))
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(base, ".*incomplete-*", "variables")):
            assert not held.ready(), held.get()
            assert time.monotonic() < deadline, "the held push never started copying"
            time.sleep(0.1)
        others = [pool.apply_async(pusher_testing.push_each, (chunk, base, str(tmp_path), 2))
                  for chunk in series[1:]]
        other_results = [result.get(timeout=120) for result in others]
        releaser = threading.Thread(target=_release_when_read, args=(fifo, stop))
        releaser.start()
        try:
            held_results = held.get(timeout=120)
        finally:
            stop.set()
            releaser.join()

    results = held_results + [result for results in other_results for result in results]
    assert [error for _, error in results] == [None] * 24
    versions = [version for version, _ in results]
    assert len(set(versions)) == 24
    for worker_results in [held_results, *other_results]:
        worker_versions = [version for version, _ in worker_results]
        assert worker_versions == sorted(worker_versions)  # one worker's pushes in turn
    others_versions = versions[6:]
    assert held_results[0][0] > max(others_versions)  # landed last, above all of them
    newest = sorted(versions)[-2:]
    assert newest == [version for version, _ in held_results[-2:]]
    assert sorted(os.listdir(base)) == [".version-high-water"] + [str(v) for v in newest]


def test_a_number_is_never_taken_again_once_its_version_is_gone(saved_model, tmp_path):
    base = tmp_path / "serving" / "m"
    first = serving_pusher.push_model(saved_model, str(base), 100, "uri-a")
    shutil.rmtree(first)  # pruned, or removed by hand: TF Serving may remember it

    second = serving_pusher.push_model(saved_model, str(base), 100, "uri-b")

    assert (first, second) == (str(base / "100"), str(base / "101"))
    assert (base / ".version-high-water").read_text() == "00000000000000000101\n"


def test_an_object_store_push_that_fails_leaves_nothing_and_frees_no_number(
    saved_model, tmp_path
):
    base = f"ram://{tmp_path.name}/serving/m"
    broken = _copy_of(saved_model, tmp_path, "broken")
    os.remove(os.path.join(broken, "Format-Serving", "saved_model.pb"))  # copied last: fails

    with pytest.raises(OSError) as raised:  # TFX's NotFoundError, from gfile's
        serving_pusher.push_model(os.path.join(broken, "Format-Serving"), base, 100, "uri-a")
    assert "broken/Format-Serving/saved_model.pb" in str(raised.value.__cause__)
    assert tf.io.gfile.listdir(base) == [".version-high-water"]  # the copy is gone
    pushed = serving_pusher.push_model(saved_model, base, 100, "uri-b")

    assert pushed == f"{base}/101"
    assert serving_pusher.list_versions(base) == [101]


def test_a_push_that_runs_out_of_space_removes_its_partial_copy(saved_model, tmp_path):
    with open(os.path.join(saved_model, "assets", "big.bin"), "wb") as f:
        f.write(bytes(1 << 20))  # more than the process may write
    base = tmp_path / "serving" / "m"

    with pusher_testing.worker_pool(1) as pool:
        outcome = pool.apply(pusher_testing.push_with_file_size_limit,
                             (saved_model, str(base), 1 << 18))

    assert "File too large" in outcome
    assert os.listdir(base) == []
