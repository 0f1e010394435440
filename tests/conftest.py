"""Shared fixtures: a config factory, a session-wide tiny CLIP teacher, tiny synthetic scenes;
for the integration tests one S3 endpoint on loopback (moto) and one local Ray instance per
session; and a zoo of good and broken image inputs."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from ccd_ray.config import ClassesConfig, TeacherConfig, load_config
from ccd_ray.demo.scenes import CLASS_NAMES, make_scenes
from ccd_ray.method.teacher import Teacher

# Four of the synthetic classes: enough for multi-label maths, few enough to stay fast.
TEST_CLASSES = CLASS_NAMES[:4]

# Everything small: tiny teacher, resnet18 at 32 px, few views, two epochs.
TINY_BASE = {
    "classes": {"names": list(TEST_CLASSES)},
    "teacher": {"model": "ccd-tiny-vit", "pretrained": None, "batch_size": 32},
    "initial": {"random_crops": 2},
    # CAM views, not the default random crops: the tests' Ray-vs-in-process parity then covers
    # the CAM boxing too (the embedded default's job tests run the default)
    "relabel": {"rounds": 1, "views_per_box": 2, "cam_resolution": 16, "view_source": "cam"},
    "train": {"backbone": "resnet18", "image_size": 32, "epochs": 2, "warmup_epochs": 1,
              "batch_size": 4},
}


# tests/test_job.py (a `ray start --head` cluster and three job runs, the longest file by
# minutes) is collected first, so that under scripts/test.sh's two pytest-xdist processes it
# starts at once and the other files run beside it, instead of it starting late and running
# alone at the end. Every other file keeps its order.
FIRST_FILE = "tests/test_job.py"


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] != FIRST_FILE)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """The test machine has two cores, often shared: with more than one intra-op thread a busy
    neighbour makes tiny forward passes up to 100x slower (spinning threads)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def make_config():
    """make_config("labels.alpha=1", ...) -> a validated CCDConfig on top of the tiny base."""

    def factory(*overrides: str, base: dict | None = None):
        return load_config(overrides=list(overrides), base=base or TINY_BASE)

    return factory


def _load_tiny_teacher(names) -> Teacher:
    torch.manual_seed(1234)  # random weights, but the same ones in every session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Teacher.from_config(TeacherConfig(model="ccd-tiny-vit", pretrained=None),
                                   ClassesConfig(names=list(names)))


@pytest.fixture(scope="session")
def tiny_teacher() -> Teacher:
    """The tiny random-weight open_clip teacher over TEST_CLASSES (loaded once per session)."""
    return _load_tiny_teacher(TEST_CLASSES)


@pytest.fixture(scope="session")
def tiny_scenes():
    """8 synthetic 64 px scenes as (uint8 3 x H x W tensors, ids)."""
    scenes = make_scenes(8, seed=3, size=64, class_names=list(TEST_CLASSES))
    images = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).contiguous()
              for s in scenes]
    ids = [f"scene-{i:03d}" for i in range(len(scenes))]
    return images, ids


# --- integration fixtures: one S3 endpoint on loopback and one local Ray per test session ---

# Small everything for the Ray Data tests: 64-96 px scenes, a 64 px student (a 2 x 2 CAM grid),
# few views, batches of 8.
INTEGRATION = ["train.image_size=64", "initial.random_crops=3", "relabel.views_per_box=2",
               "compute.images_per_batch=8", "data.files_per_task=8"]

S3_BUCKET = "ccd-test"
_DUMMY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                  # never ask an instance-metadata service for credentials or the region
                  "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint (moto's server mode) on 127.0.0.1 with one empty bucket.

    Dummy credentials go into os.environ for the whole session (restored afterwards), before
    Ray starts, so the Ray workers inherit them and pyarrow's S3 client finds them there."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _DUMMY_AWS_ENV.items():
            mp.setenv(key, value)
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()  # port 0: the OS picks a free port, read back below
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=S3_BUCKET)
        try:
            yield {"endpoint": endpoint, "bucket": S3_BUCKET}
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray instance for the whole session (depends on s3_server so that its workers
    start with the S3 credentials in their environment)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # read when ray.data is imported
    import ray
    import ray.data  # noqa: F401

    # address="local": always a fresh instance of our own, never a cluster someone started
    # with `ray start` on this machine. Two cores here: more logical CPUs than cores keeps the
    # actor pools from starving the read tasks.
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:  # Ray waits a fixed 30 s for its raylet: too short when the
            # machine is overloaded by other work; a second start usually makes it
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def local_teacher(tmp_path_factory) -> str:
    """teacher.model spec of a tiny random-weight CLIP saved once as an open_clip local-dir,
    so the Ray actors and the test process load exactly the same weights."""
    from ccd_ray.method.teacher import load_clip, save_local_dir

    torch.manual_seed(4321)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _, _ = load_clip(TeacherConfig(model="ccd-tiny-vit", pretrained=None))
    return save_local_dir(model, "ccd-tiny-vit", tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def s3_config(make_config, s3_server, local_teacher):
    """s3_config(corpus_prefix, *overrides) -> a config reading s3://<bucket>/<corpus_prefix>
    and writing runs under s3://<bucket>/runs, through the loopback endpoint."""

    def factory(corpus_prefix: str, *overrides: str):
        bucket = s3_server["bucket"]
        return make_config(*INTEGRATION, f"teacher.model={local_teacher}",
                           f"data.s3_endpoint={s3_server['endpoint']}",
                           f"data.corpus_uri=s3://{bucket}/{corpus_prefix}",
                           f"data.output_uri=s3://{bucket}/runs", *overrides)

    return factory


def make_classifier(class_names: list[str], seed: int):
    """(a random-weight resnet18 CAMClassifier, its save_classifier checkpoint as bytes)."""
    import io

    from ccd_ray.method.classifier import CAMClassifier, save_classifier

    torch.manual_seed(seed)
    model = CAMClassifier("resnet18", len(class_names)).eval()
    buffer = io.BytesIO()
    save_classifier(buffer, model, class_names, 64)
    return model, buffer.getvalue()


def tree(fs, root: str, prefix: str = "") -> dict[str, int]:
    """{path relative to root: size} of every file under root/prefix (a snapshot to compare)."""
    import posixpath

    import pyarrow.fs as pafs

    base = posixpath.join(root, prefix) if prefix else root
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return {}
    return {posixpath.relpath(i.path, root): i.size
            for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if i.type == pafs.FileType.File}


# --- a zoo of inputs, good and bad, for the decoding, actor and bad-input tests ---

ZOO_MAX_PIXELS = 100_000  # data.max_image_pixels the zoo is meant for: 400 x 400 is too large


def _encode(img, fmt: str, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG that claims width x height pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def image_zoo(size: int = 64, seed: int = 11) -> list[tuple[str, bytes | None, str | None]]:
    """(image_id, bytes, expected error prefix or None) of every kind of input the decoder must
    take: odd modes that convert to RGB (None: must decode), and broken ones (the
    imaging/corpus reason their error must start with)."""
    from PIL import Image

    from ccd_ray.demo.scenes import make_scenes
    from ccd_ray.io.decode import EMPTY, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED

    scene = Image.fromarray(make_scenes(1, seed=seed, size=size)[0].image)
    png, jpeg = _encode(scene, "PNG"), _encode(scene, "JPEG", quality=90)
    rgba = scene.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(scene.size))
    palette = scene.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    idat = png.index(b"IDAT") + 4
    middle = idat + (len(png) - idat) // 2
    corrupt = png[:middle] + bytes([png[middle] ^ 0xFF]) + png[middle + 1:]
    return [
        ("mode-rgb-png", png, None),
        ("mode-rgb-jpeg", jpeg, None),
        ("mode-gray-L", _encode(scene.convert("L"), "PNG"), None),
        ("mode-cmyk-jpeg", _encode(scene.convert("CMYK"), "JPEG"), None),
        ("mode-palette-P", _encode(palette, "PNG"), None),
        ("mode-palette-transparent", _encode(palette, "PNG", transparency=0), None),
        ("mode-rgba-alpha", _encode(rgba, "PNG"), None),
        ("mode-la-alpha", _encode(rgba.convert("LA"), "PNG"), None),
        ("mode-one-pixel", _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), None),
        ("bad-zero-bytes", b"", EMPTY),
        ("bad-null", None, EMPTY),
        ("bad-not-an-image", b"hello", NOT_AN_IMAGE),
        ("bad-corrupt-png", corrupt, TRUNCATED),
        ("bad-truncated-jpeg", jpeg[:len(jpeg) // 2], TRUNCATED),
        ("bad-truncated-png", png[:len(png) // 2], TRUNCATED),
        ("bad-too-large", _encode(Image.new("RGB", (400, 400), (9, 9, 9)), "PNG"), TOO_LARGE),
        ("bad-bomb-header", png_header(100_000, 100_000), TOO_LARGE),
    ]


def attempts(store, stage: str) -> set[str]:
    """Names of the attempt-* folders of a stage, committed or not."""
    import posixpath

    import pyarrow.fs as pafs

    folder = store.path(stage)
    if store.fs.get_file_info(folder).type == pafs.FileType.NotFound:
        return set()
    return {posixpath.basename(i.path) for i in store.fs.get_file_info(pafs.FileSelector(folder))
            if posixpath.basename(i.path).startswith("attempt-")}


def run_to_round(cfg, store, round_index: int, checkpoint: bytes = b""):
    """The round loop with the Ray executor up to round_index's labels, training replaced by
    a fixed classifier checkpoint."""
    from ccd_ray.method.rounds import run_rounds
    from ccd_ray.stages.pipeline import RayExecutor

    class FixedClassifier(RayExecutor):
        def train_segment(self, segment, targets, trained):
            return f"fixed-{segment.index}"

        def classifier(self, trained):
            return checkpoint

    return run_rounds(cfg, FixedClassifier(cfg, store), stop_at_round=round_index)
