"""The `train-inputs` stage: every good image decoded, resized to train.image_size and encoded
(train.inputs_encoding) once per run, with its split; the Ray Data workers that feed training
decode them again (method.rows.training_rows). Its task function imports no torch (Pillow
resizes: io.inputs_codec.resize_inputs), so a fresh Ray worker process starts it in a fraction
of a second instead of the seconds torch and torchvision take to import."""

from __future__ import annotations

import pyarrow as pa

from ccd_ray.config import CCDConfig, config_from_dict
from ccd_ray.io.decode import decoded_rows
from ccd_ray.io.inputs_codec import encode_inputs, resize_inputs
from ccd_ray.io.storage import RunStore, list_files
from ccd_ray.method.schedule import is_holdout
from ccd_ray.stages.datasets import corpus_rows

INPUTS_STAGE = "train-inputs"


def inputs_batch(batch: pa.Table, cfg_dict: dict) -> pa.Table:
    """A batch of corpus rows -> its good images' encoded inputs and splits (an image that
    does not decode is recorded by the labeling stages, not here)."""
    cfg = config_from_dict(cfg_dict)
    tc = cfg.train
    good = list(decoded_rows(batch, cfg.data.max_image_pixels, cfg.data.max_image_side))
    ids, images = [i for i, _ in good], [image for _, image in good]
    encoded = encode_inputs(resize_inputs(images, tc.image_size), tc.inputs_encoding,
                            tc.inputs_quality)
    return pa.table({"image_id": pa.array(ids, pa.string()),
                     "image": pa.array(encoded, pa.binary()),
                     "holdout": pa.array([is_holdout(i, tc.holdout_fraction, cfg.seed)
                                          for i in ids], pa.bool_())})


def build_inputs(cfg: CCDConfig, store: RunStore) -> str:
    """The committed stage's folder, built first where it is not committed."""
    if store.committed(INPUTS_STAGE) is None:
        attempt = store.begin(INPUTS_STAGE)
        inputs = corpus_rows(cfg).map_batches(inputs_batch, batch_format="pyarrow",
                                              fn_kwargs={"cfg_dict": cfg.to_dict()})
        # rows land in corpus order, so every run trains on the same sequence (reproducible)
        inputs.context.execution_options.preserve_order = True
        inputs.write_parquet(attempt, filesystem=store.fs)
        store.commit(INPUTS_STAGE, attempt)
    return store.committed(INPUTS_STAGE)


def input_files(store: RunStore, inputs_path: str) -> list[str]:
    """The stage's Parquet files in row order (write order): every reader streams them so."""
    return list_files(store.fs, inputs_path, (".parquet",))
