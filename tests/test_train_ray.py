"""The DDP training step under Ray Train equals the single-process step on the same batch."""

from __future__ import annotations

import tempfile

import pytest
import torch

from ccd_ray.classifier import CAMClassifier
from ccd_ray.training import step_losses, train_step

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


@pytest.mark.parametrize("workers", [1, 2])
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
