"""Pushes through the real ServingPusher executor, in this process or in worker processes.

The worker functions run in `forkserver` children (see `worker_pool`): the
server imports this module, and TensorFlow with it, once, and each worker is
forked from it before TensorFlow has run anything.
"""

import json
import multiprocessing
import multiprocessing.pool
import os
import resource
import signal

from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import serving_pusher


def execute_push(
    model_uri: str,
    base_directory: str,
    pushed_uri: str,
    blessing_uri: str,
    blessed: bool = True,
    keep: int | None = None,
) -> standard_artifacts.PushedModel:
    """Runs the ServingPusher executor on the Trainer output `model_uri`; returns its output."""
    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = blessing_uri
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = pushed_uri
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_directory)
    )
    exec_properties = {"push_destination": proto_utils.proto_to_json(destination)}
    if keep is not None:
        exec_properties["custom_config"] = json.dumps({serving_pusher.KEEP_VERSIONS_KEY: keep})
    serving_pusher.Executor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        exec_properties,
    )
    return pushed


def push_each(
    model_uris: list[str], base_directory: str, work_dir: str, keep: int
) -> list[tuple[int | None, str | None]]:
    """Pushes each model in turn: (version pushed, None) or (None, the error) for each."""
    results = []
    for model_uri in model_uris:
        name = os.path.basename(model_uri)
        try:
            pushed = execute_push(
                model_uri, base_directory, os.path.join(work_dir, "pushed", name),
                os.path.join(work_dir, "blessing", name), keep=keep,
            )
            results.append((int(pushed.get_string_custom_property("pushed_version")), None))
        except Exception as error:  # reported to the test, which names it
            results.append((None, f"{type(error).__name__}: {error}"))
    return results


def push_with_file_size_limit(model_path: str, base_directory: str, limit: int) -> str:
    """`push_model` with writes beyond `limit` bytes failing (EFBIG), as a full disk fails them.

    Returns:
        "pushed", or the error the push raised.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        serving_pusher.push_model(model_path, base_directory, 1, "uri")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "pushed"


def worker_pool(processes: int) -> multiprocessing.pool.Pool:
    """A pool of `processes` workers forked from a server that has imported this module."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context.Pool(processes, maxtasksperchild=1)
