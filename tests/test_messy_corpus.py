"""A messy corpus as users have it (tests/corpus_builders.py), read as a plain folder, as
img2dataset-style WebDataset tars, and both through S3 (moto on loopback), at the reader level
(corpus rows + decode): every file or sample is accounted for, labeled-ready or with its
reason, under a unique id."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
from conftest import ZOO_MAX_PIXELS
from corpus_builders import MAX_SIDE, write_messy_folder, write_messy_webdataset

from ccd_ray.io.corpus import corpus_layout, discover, read_task_rows
from ccd_ray.io.decode import decode_image
from ccd_ray.io.storage import filesystem_for

FS = pafs.LocalFileSystem()
WRITERS = {"images": write_messy_folder, "webdataset": write_messy_webdataset}


def outcomes(fs, layout) -> dict[str, tuple]:
    """image_id -> ("ok", (H, W)) or (stage, reason) of every row of the corpus."""
    got: dict[str, tuple] = {}
    for files in layout.tasks:
        for table in read_task_rows(fs, layout.without_tasks(), files):
            for row in table.to_pylist():
                assert row["image_id"] not in got, f"duplicate id {row['image_id']}"
                if row["error"]:
                    got[row["image_id"]] = ("read", row["error"])
                    continue
                decoded = decode_image(row["image"], ZOO_MAX_PIXELS, MAX_SIDE)
                got[row["image_id"]] = (("decode", decoded.error) if decoded.error
                                        else ("ok", tuple(decoded.image.shape[1:])))
    return got


def assert_outcomes(got: dict[str, tuple], expected: dict[str, tuple]) -> None:
    assert sorted(got) == sorted(expected)
    for image_id, (stage, want) in expected.items():
        assert got[image_id][0] == stage, (image_id, got[image_id])
        if stage == "ok":
            assert got[image_id][1] == want, image_id
        else:
            assert got[image_id][1].startswith(want), (image_id, got[image_id])
            assert len(got[image_id][1]) <= 300


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_messy_corpus_every_file_is_accounted_for(tmp_path, kind):
    root = str(tmp_path / kind)
    expected = WRITERS[kind](FS, root)
    layout = discover(FS, root, files_per_task=7)
    assert layout.kind == kind and layout.found.startswith(f"{kind} (detected)")
    assert_outcomes(outcomes(FS, layout), expected)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_messy_corpus_through_s3(s3_server, make_config, kind):
    cfg = make_config(f"data.corpus_uri=s3://{s3_server['bucket']}/messy-{kind}",
                      f"data.s3_endpoint={s3_server['endpoint']}", "data.files_per_task=5")
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    expected = WRITERS[kind](fs, root)
    fs, layout = corpus_layout(cfg)
    assert layout.kind == kind
    assert_outcomes(outcomes(fs, layout), expected)
