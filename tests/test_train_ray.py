"""The DDP training step under Ray Train equals the single-process step on the same batch."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

from ccd_ray.method.classifier import CAMClassifier
from ccd_ray.method.training import step_losses, train_step

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_CLASSES, SIZE, BATCH, BETA = 3, 64, 8, 0.5


def fixed_batch():
    g = torch.Generator().manual_seed(11)
    first = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    second = first * 0.8 + 0.1
    targets = torch.rand(BATCH, NUM_CLASSES, generator=g)
    weights = torch.rand(BATCH, generator=g) + 0.5
    return first, second, targets, weights


def fresh_model() -> CAMClassifier:
    torch.manual_seed(5)
    return CAMClassifier("resnet18", NUM_CLASSES)


def single_process(parts: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and weights after one Adam step, the gradient averaged over `parts` equal shards
    of the batch, as DDP averages its workers' gradients."""
    model = fresh_model()
    optimizer = torch.optim.Adam(model.param_groups(1e-3, 10.0))
    first, second, targets, weights = fixed_batch()
    model.train()
    shards = zip(*(t.chunk(parts) for t in (first, second, targets, weights)))
    losses = [step_losses(model, *shard, BETA)["loss"] for shard in shards]
    optimizer.zero_grad()
    (sum(losses) / parts).backward()
    optimizer.step()
    return float(sum(losses).detach() / parts), {k: v.detach().clone()
                                                 for k, v in model.named_parameters()}


def ddp_loop(config):
    """One train_step per worker on its shard of the batch; reports its loss and a checksum of
    the weights after the (gradient-averaged) step."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    size = ray.train.get_context().get_world_size()
    model = fresh_model()
    optimizer = torch.optim.Adam(model.param_groups(1e-3, 10.0))
    model = ray.train.torch.prepare_model(model)
    shard = [t.chunk(size)[rank] for t in fixed_batch()]
    model.train()
    losses = train_step(model, optimizer, *shard, BETA)
    # weights only: batch-norm running statistics legitimately differ (each worker sees half)
    params = getattr(model, "module", model).named_parameters()
    checksum = {k: float(v.detach().double().sum()) for k, v in params}
    # Ray Train V2 keeps the metrics of reports that carry a checkpoint (rank 0's here)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
        ray.train.report({"loss": losses["loss"], "rank": rank, "checksum": checksum},
                         checkpoint=checkpoint)


@pytest.mark.parametrize("workers", [2])  # one worker: test_a_segment_under_ray_train_...
def test_ddp_step_matches_single_process(ray_session, tmp_path, workers):
    import sys

    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # the workers cannot import this test module: ship its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = TorchTrainer(
        ddp_loop, scaling_config=ScalingConfig(num_workers=workers),
        run_config=RunConfig(name=f"ddp-{workers}", storage_path=str(tmp_path))).fit()
    loss, state = single_process(workers)
    # rank 0 reports the loss of its own shard; the reference keeps each shard's loss too
    first, second, targets, weights = fixed_batch()
    reference_model = fresh_model().train()
    rank0 = [t.chunk(workers)[0] for t in (first, second, targets, weights)]
    rank0_loss = float(step_losses(reference_model, *rank0, BETA)["loss"])
    assert result.metrics["loss"] == pytest.approx(rank0_loss, rel=1e-5, abs=1e-6)
    assert set(result.metrics["checksum"]) == set(state)
    for key, value in state.items():
        assert result.metrics["checksum"][key] == pytest.approx(float(value.double().sum()),
                                                                rel=1e-4, abs=1e-4), key


def _write_inputs(folder, size: int, files: int, rows: int) -> dict[str, np.ndarray]:
    """A train-inputs stage of `files` Parquet files (one block each) and its soft labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ccd_ray.io.inputs_codec import encode_inputs

    rng = np.random.default_rng(4)
    labels = {}
    for f in range(files):
        ids = [f"img-{f:02d}-{r:02d}" for r in range(rows)]
        pixels = rng.integers(0, 256, (rows, 3, size, size), dtype=np.uint8)
        pq.write_table(pa.table({"image_id": ids,
                                 "image": pa.array(encode_inputs(pixels, "jpeg", 95), pa.binary()),
                                 "holdout": [False] * rows}), folder / f"part-{f:02d}.parquet")
        labels.update({i: rng.random(NUM_CLASSES).astype(np.float32) for i in ids})
    return labels


def test_a_segment_under_ray_train_equals_the_in_process_loop(ray_session, tmp_path,
                                                             make_config):
    """One Ray Train fit of a segment, its inputs in many small blocks (whose completion order
    varies from run to run), trains the weights the in-process executor trains on the same
    stage: both stream its rows in order through the one epoch loop. What makes a resumed
    run equal an uninterrupted one, and a sweep trial equal the job."""
    from ccd_ray.io.storage import RunStore
    from ccd_ray.method.local import CachedScores, LocalExecutor
    from ccd_ray.method.rounds import Targets
    from ccd_ray.method.schedule import Segment
    from ccd_ray.stages.train import STATE_FILE, fit_segment, training_dataset
    from ccd_ray.sweep.prepare import read_inputs

    cfg = make_config("classes.names=[a, b, c]", "train.image_size=32", "train.batch_size=4",
                      "train.epochs=2", "train.warmup_epochs=1", "train.beta=0.5",
                      "train.shuffle_buffer=5")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    labels = _write_inputs(inputs, 32, files=8, rows=3)
    ids = np.array(sorted(labels))
    targets = Targets(ids, np.stack([labels[i] for i in ids]), np.ones(len(ids), np.float32))
    store = RunStore.open(str(tmp_path / "runs"), "ray", cfg.data)
    result = fit_segment(cfg, store, training_dataset(cfg, str(inputs), store, targets), 0,
                         (0, 2), None)
    with result.checkpoint.as_directory() as folder:
        under_ray = torch.load(f"{folder}/{STATE_FILE}", weights_only=True)["model"]
    local = LocalExecutor(cfg, list(ids), CachedScores([]), read_inputs(store, str(inputs), 32))
    in_process = local.train_segment(Segment(0, 0, (0, 2)), targets, None).model.state_dict()
    assert [h["batches"] for h in local.history] == [6, 6]
    assert under_ray.keys() == in_process.keys()
    for key in under_ray:
        torch.testing.assert_close(under_ray[key], in_process[key], rtol=0, atol=0, msg=key)


def test_train_report_lines_are_kept_off_the_console():
    """Ray Train's per-report INFO logger is named by its module's file path: when it stops
    being so, this fails and stages.train.quiet_train_reports can go."""
    import logging

    from ray.train.v2._internal.execution import context

    from ccd_ray.stages.train import TRAIN_REPORT_LOGGER, quiet_train_reports

    assert context.logger.name == context.__file__
    assert context.logger.name.replace("\\", "/").endswith(TRAIN_REPORT_LOGGER)
    level = context.logger.level
    try:
        context.logger.setLevel(logging.INFO)  # as a worker whose logging lets INFO through
        quiet_train_reports()
        assert context.logger.level == logging.WARNING
    finally:
        context.logger.setLevel(level)
