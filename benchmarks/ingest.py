"""Ingestion benchmark: ImageFolderExampleGen against decoding every image once with Pillow.

Generates a folder of JPEGs of mixed sizes (some >= 4000 px), then, each in a
fresh process whose whole process tree is sampled for resident memory:

1. baseline: a plain loop that opens and fully decodes every image once with Pillow;
2. ingestion: ImageFolderExampleGen's executor (Beam, DirectRunner) on the folder.

and prints images/s, peak RSS and the ratio of ingestion wall time to the
baseline's (and of their CPU times, which a busy shared machine disturbs less).
By default ingestion runs as a local pipeline does, with no Beam arguments.
With --double it repeats on a folder twice the size, to show
whether memory stays flat. Targets (issue 3): ratio <= 1.5, peak RSS < 1.5 GiB,
flat when the folder doubles. A script, not a test: the figures depend on the
machine and on what else runs on it.

    .venv/bin/python benchmarks/ingest.py --images 5000 --double
    .venv/bin/python benchmarks/ingest.py --images 5000 \
        --beam-arg=--direct_running_mode=multi_processing --beam-arg=--direct_num_workers=2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from PIL import Image
from synthetic_images import photo_jpeg

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = ("red", "green", "blue")
# (share of files, longest side range): mostly photos, some large, a few huge.
SIZE_MIX = ((0.88, (200, 900)), (0.10, (1000, 2600)), (0.02, (4000, 6000)))
BASE_IMAGES_PER_SIZE = 24
DEFAULT_BEAM_ARGS: tuple[str, ...] = ()
"""The local pipeline's default: no Beam arguments, so DirectRunner in memory, one worker.

Any Beam argument makes TFX's executor build an ephemeral TFX sdist first (a
second or two, counted here as it is in a run)."""


# --------------------------------------------------------------------- the folder


def _base_jpeg(rng: np.random.Generator, longest: int, colour: tuple[int, int, int]) -> bytes:
    """A photo-like JPEG whose longer side is `longest`, landscape or portrait."""
    aspect = rng.uniform(0.6, 1.0)
    width, height = (longest, int(longest * aspect)) if rng.random() < 0.5 else (
        int(longest * aspect), longest)
    return photo_jpeg(rng, width, height, colour)


def _unique(jpeg: bytes, tag: str) -> bytes:
    """The same image with a JPEG comment naming `tag`: new bytes, same decoding cost."""
    comment = tag.encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return jpeg[:2] + segment + jpeg[2:]


def make_folder(root: str, images: int, seed: int = 0) -> dict[str, int]:
    """Writes `images` distinct JPEGs under root/<class>/; returns counts by size band."""
    rng = np.random.default_rng(seed)
    bases = {
        band: [_base_jpeg(rng, int(rng.integers(*sides)), (200, 60, 60)) for _ in range(
            BASE_IMAGES_PER_SIZE)]
        for band, (_, sides) in enumerate(SIZE_MIX)
    }
    shuffle = random.Random(seed)
    bands = []
    for band, (share, _) in enumerate(SIZE_MIX):
        bands += [band] * round(images * share)
    bands = (bands + [0] * images)[:images]
    shuffle.shuffle(bands)
    for label in CLASSES:
        os.makedirs(os.path.join(root, label), exist_ok=True)
    counts = {f"{sides[0]}-{sides[1]}px": 0 for _, sides in SIZE_MIX}
    for n, band in enumerate(bands):
        label = CLASSES[n % len(CLASSES)]
        data = _unique(shuffle.choice(bases[band]), f"{seed}-{n}")
        with open(os.path.join(root, label, f"{n:06d}.jpg"), "wb") as f:
            f.write(data)
        counts[list(counts)[band]] += 1
    return counts


# -------------------------------------------------------------------- the workers


def decode_all(root: str) -> int:
    """The baseline: open and fully decode every image once, in a plain loop."""
    decoded = 0
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            with Image.open(os.path.join(folder, name)) as image:
                image.load()
            decoded += 1
    return decoded


def ingest(root: str, output: str, beam_args: list[str]) -> dict:
    """ImageFolderExampleGen's executor on the folder, as the pipeline runs it."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components import image_folder_example_gen as gen
    from components.config import IngestConfig

    started = time.monotonic()  # The pipeline process has TFX loaded already.
    ingest = IngestConfig()  # What a run ingests with by default.
    input_config = gen.make_input_config(root)
    examples = standard_artifacts.Examples()
    examples.uri = output
    exec_properties = {
        "input_base": root,
        "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(gen.make_output_config(input_config, ingest)),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        gen.INGEST_CONFIG_KEY: gen.ingest_config_property(ingest),
    }
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=beam_args)
    gen.Executor(context).Do({}, {"examples": [examples]}, exec_properties)
    seconds = time.monotonic() - started
    with open(os.path.join(output, gen.SUMMARY_FILE)) as f:
        return {"by_status": json.load(f)["by_status"], "seconds": seconds}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _child(args: argparse.Namespace) -> None:
    started = time.monotonic()
    if args.child == "decode":
        cpu = _cpu_seconds()
        result = {"images": decode_all(args.folder), "seconds": time.monotonic() - started}
    else:
        from components import image_folder_example_gen  # noqa: F401 (imports not timed)

        cpu = _cpu_seconds()
        result = ingest(args.folder, args.output, args.beam_arg)
    result["cpu_seconds"] = _cpu_seconds() - cpu
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ measurement


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakRss:
    """The peak RSS of a process and its children, sampled while the `with` block runs."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.rss = 0
        self._process, self._every_s = psutil.Process(pid), every_s
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._sampler.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                self.rss = max(self.rss, _tree_rss(self._process))
            except psutil.Error:
                pass
            time.sleep(self._every_s)


def measure(command: list[str]) -> dict:
    """Runs a child; returns its result, wall time and the peak RSS of its process tree."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(child.pid) as peak:
        out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{command[-1]} failed:\n{err[-3000:]}")
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["wall"] = time.monotonic() - started
    result["peak_rss"] = peak.rss
    return result


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_size(images: int, workdir: str, beam_args: list[str], seed: int) -> dict:
    folder = os.path.join(workdir, f"images-{images}")
    started = time.monotonic()
    bands = make_folder(folder, images, seed)
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(folder) for n in ns)
    print(f"\n{images} JPEGs ({size / 2**20:.0f} MiB; {bands}) generated in "
          f"{time.monotonic() - started:.0f}s", flush=True)
    me = [sys.executable, os.path.abspath(__file__), "--folder", folder]
    baseline = measure(me + ["--child", "decode"])
    print(f"  Pillow decode loop: {baseline['seconds']:.1f}s, "
          f"{images / baseline['seconds']:.0f} images/s, peak RSS {_gib(baseline['peak_rss'])}",
          flush=True)
    output = os.path.join(workdir, f"examples-{images}")
    shutil.rmtree(output, ignore_errors=True)
    beam = [f"--beam-arg={arg}" for arg in beam_args]
    ingestion = measure(me + ["--child", "ingest", "--output", output, *beam])
    ratio = ingestion["seconds"] / baseline["seconds"]
    print(f"  ingestion:          {ingestion['seconds']:.1f}s "
          f"({ingestion['wall']:.1f}s with interpreter start and TFX imports), "
          f"{images / ingestion['seconds']:.0f} images/s, peak RSS {_gib(ingestion['peak_rss'])} "
          f"(process tree), {ingestion['by_status']}", flush=True)
    cpu_ratio = ingestion["cpu_seconds"] / baseline["cpu_seconds"]
    print(f"  ratio ingestion / decode loop: {ratio:.2f} (target <= 1.5); CPU time "
          f"{ingestion['cpu_seconds']:.1f}s / {baseline['cpu_seconds']:.1f}s = {cpu_ratio:.2f} "
          f"(steadier than wall time on a shared machine)", flush=True)
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"images": images, "baseline": baseline, "ingestion": ingestion, "ratio": ratio,
            "cpu_ratio": cpu_ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--double", action="store_true", help="also run on twice as many images")
    parser.add_argument("--workdir", help="default: a temporary folder, removed afterwards")
    parser.add_argument("--beam-arg", action="append", default=None,
                        help="Beam argument for ingestion, repeatable (default: none, "
                             "as a local run: DirectRunner in memory, one worker)")
    parser.add_argument("--child", choices=("decode", "ingest"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.beam_arg = args.beam_arg or list(DEFAULT_BEAM_ARGS)
        _child(args)
        return
    beam_args = args.beam_arg or list(DEFAULT_BEAM_ARGS)
    workdir = args.workdir or tempfile.mkdtemp(prefix="ingest-bench-")
    print(f"machine: {psutil.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; Beam args {beam_args}")
    try:
        results = [run_size(args.images, workdir, beam_args, seed=1)]
        if args.double:
            results.append(run_size(2 * args.images, workdir, beam_args, seed=2))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary")
    for r in results:
        print(f"  {r['images']:>6} images: ingestion {r['images'] / r['ingestion']['seconds']:.0f} "
              f"images/s, ratio {r['ratio']:.2f} (CPU time {r['cpu_ratio']:.2f}), "
              f"peak RSS {_gib(r['ingestion']['peak_rss'])}")
    if len(results) == 2:
        growth = results[1]["ingestion"]["peak_rss"] / results[0]["ingestion"]["peak_rss"]
        print(f"  peak RSS x{growth:.2f} when the folder doubles (flat = about x1)")


if __name__ == "__main__":
    main()
