"""What Ray itself costs a stage, with no work in it: the floor under a run's fixed cost.

On the local Ray instance a job starts (ccd_ray.stages.runtime.init_ray, with its settings),
each measurement runs --repeats times:

  init            starting the local Ray instance (once)
  data            one Ray Data execution shaped like a scoring stage: read a 64-row Parquet
                  file -> map_batches on a one-actor pool -> write Parquet; the actor does
                  nothing
  data+torch      the same, the actor importing torch and torchvision in __init__ (what every
                  scoring or prediction actor does before its model loads)
  fit             one Ray Train fit of one CPU worker whose loop only reports once, with the
                  job's RunConfig shape (local storage, WARNING logs)
  fit+ingest      the same with a 64-row dataset the worker reads through
                  get_dataset_shard().iter_batches once (the ingest a training segment has)
  fit+torch       fit+ingest, the loop importing torch and torchvision and building the gloo
                  process group's model wrapper (prepare_model on a 1-layer model), as a
                  training segment's worker does before its first batch

Every execution starts its own processes (an actor pool per Ray Data execution, a controller
and a worker group per fit), as the job's stages do. Seconds are wall-clock from the call to
its return, one line each, then the median per kind.

    python benchmarks/ray_floors.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 64


class NoopActor:
    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


class TorchActor:
    def __init__(self):
        import torch  # noqa: F401
        import torchvision  # noqa: F401

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def data_execution(source: str, out: str, actor: type) -> float:
    import ray

    started = time.perf_counter()
    (ray.data.read_parquet(source)
     .map_batches(actor, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
                  batch_size=16, batch_format="pyarrow", num_cpus=1)
     .write_parquet(out))
    return time.perf_counter() - started


def _report_loop(config: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train") if config["ingest"] else None
    if config["torch"]:
        import torch
        import torchvision  # noqa: F401

        ray.train.torch.prepare_model(torch.nn.Linear(4, 2))
    if shard is not None:
        for _ in shard.iter_batches(batch_size=16, batch_format="numpy"):
            pass
    ray.train.report({"done": 1})


def fit(source: str, storage: str, name: str, ingest: bool, with_torch: bool) -> float:
    import ray
    from ray.train import DataConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    TorchTrainer(
        _report_loop, train_loop_config={"ingest": ingest, "torch": with_torch},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=storage,
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets={"train": ray.data.read_parquet(source)} if ingest else None,
        dataset_config=DataConfig()).fit()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    import ray

    from ccd_ray.stages.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="ray-floors-"))
    source = str(work / "rows.parquet")
    pq.write_table(pa.table({"image_id": [f"i{i}" for i in range(ROWS)],
                             "x": list(range(ROWS))}), source)
    started = time.perf_counter()
    init_ray()
    seconds: dict[str, list[float]] = {"init": [time.perf_counter() - started]}
    print(f"init: {seconds['init'][0]:.1f} s", flush=True)
    kinds = {
        "data": lambda i: data_execution(source, str(work / f"data-{i}"), NoopActor),
        "data+torch": lambda i: data_execution(source, str(work / f"torch-{i}"), TorchActor),
        "fit": lambda i: fit(source, str(work / "train"), f"fit-{i}", False, False),
        "fit+ingest": lambda i: fit(source, str(work / "train"), f"ingest-{i}", True, False),
        "fit+torch": lambda i: fit(source, str(work / "train"), f"torch-{i}", True, True),
    }
    for repeat in range(args.repeats):  # kinds interleaved, so a load change hits all of them
        for kind, run in kinds.items():
            took = run(repeat)
            seconds.setdefault(kind, []).append(took)
            print(f"{kind} #{repeat + 1}: {took:.1f} s", flush=True)
    ray.shutdown()
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    print("\n| what | median s | runs (s) |\n| --- | ---: | --- |")
    for kind, values in seconds.items():
        print(f"| {kind} | {medians[kind]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "median": medians}, indent=1))


if __name__ == "__main__":
    main()
