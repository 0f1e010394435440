"""GPU check: teacher relabel throughput and CAM-classifier training speed on one CUDA device.

One short run (well under 5 minutes on any recent GPU) measuring the project's own code paths:

  (a) relabel throughput of the CLIP teacher: `Teacher.score_batched` (fp16 autocast on cuda)
      on random views of an open_clip architecture with random weights (default ViT-B-32,
      nothing is downloaded), in batches of `--batch`; views/s including the host->device
      copy and the scores' copy back. The same teacher weights score a handful of views on
      the CPU in fp32 for the GPU/CPU ratio, and the largest probability difference between
      the fp16 GPU and fp32 CPU scores of those views is reported.
  (b) training speed of `CAMClassifier` (default resnet50 at 224 px, batch 32) with
      `training.train_step` (bf16 autocast on cuda, two views per image, Adam): steps/s and
      images/s after warm-up steps, plus the peak GPU memory.

Prints a markdown table (and writes the numbers as JSON with --json). On a machine without
CUDA it prints "no GPU: nothing measured" and exits 0; with --allow-cpu it instead runs tiny
sizes on the CPU, so the script itself can be smoke-tested anywhere in a few seconds.

Usage:
  python benchmarks/gpu_check.py [--json out.json]
  python benchmarks/gpu_check.py --allow-cpu          # no GPU: tiny smoke run on the CPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

# The 20 PASCAL VOC classes: a realistic C for the teacher's text side and the classifier head.
CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor"]
FULL = {"model": "ViT-B-32", "views": 512, "batch": 256, "cpu_views": 16, "repeats": 3,
        "backbone": "resnet50", "image_size": 224, "train_batch": 32, "steps": 20, "warmup": 3}
TINY = {"model": "ccd-tiny-vit", "views": 8, "batch": 4, "cpu_views": 4, "repeats": 1,
        "backbone": "resnet18", "image_size": 32, "train_batch": 4, "steps": 2, "warmup": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allow-cpu", action="store_true",
                   help="without CUDA, run tiny sizes on the CPU instead of measuring nothing")
    p.add_argument("--model", help=f"open_clip architecture, random weights ({FULL['model']})")
    p.add_argument("--views", type=int, help=f"views scored on the GPU ({FULL['views']})")
    p.add_argument("--batch", type=int, help=f"views per teacher forward pass ({FULL['batch']})")
    p.add_argument("--cpu-views", type=int, help=f"views scored on the CPU ({FULL['cpu_views']})")
    p.add_argument("--repeats", type=int, help=f"timed passes over the views ({FULL['repeats']})")
    p.add_argument("--backbone", choices=("resnet18", "resnet50", "resnet101"),
                   help=f"classifier backbone ({FULL['backbone']})")
    p.add_argument("--image-size", type=int, help=f"classifier input side ({FULL['image_size']})")
    p.add_argument("--train-batch", type=int, help=f"images per step ({FULL['train_batch']})")
    p.add_argument("--steps", type=int, help=f"timed training steps ({FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps/passes first ({FULL['warmup']})")
    p.add_argument("--json", dest="json_path", help="also write the numbers here")
    return p.parse_args(argv)


def _sizes(args: argparse.Namespace, tiny: bool) -> dict:
    base = TINY if tiny else FULL
    return {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_teacher(sizes: dict, device: torch.device) -> dict:
    from ccd_ray.config import ClassesConfig, TeacherConfig
    from ccd_ray.method.teacher import Teacher

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open_clip warns about random weights
        cpu_teacher = Teacher.from_config(TeacherConfig(model=sizes["model"], pretrained=None),
                                          ClassesConfig(names=CLASSES), "cpu")
    teacher = cpu_teacher
    if device.type == "cuda":  # the same weights on the GPU
        teacher = dataclasses.replace(cpu_teacher, device=device,
                                      model=copy.deepcopy(cpu_teacher.model).to(device),
                                      text_embeddings=cpu_teacher.text_embeddings.to(device))
    side = teacher.image_size
    views = torch.randn(sizes["views"], 3, side, side, generator=torch.Generator().manual_seed(1))
    if device.type == "cuda":
        views = views.pin_memory()
    for _ in range(max(sizes["warmup"], 1)):
        teacher.score(views[:sizes["batch"]])
    _sync(device)
    seconds = []
    for _ in range(sizes["repeats"]):
        started = time.perf_counter()
        teacher.score_batched(views, sizes["batch"])  # scores come back to the host: synced
        seconds.append(time.perf_counter() - started)
    rate = sizes["views"] / statistics.median(seconds)

    cpu_views = views[:sizes["cpu_views"]].clone()
    cpu_teacher.score(cpu_views[:1])  # warm-up
    started = time.perf_counter()
    cpu_scores = cpu_teacher.score_batched(cpu_views, sizes["batch"])
    cpu_rate = len(cpu_views) / (time.perf_counter() - started)
    diff = float((teacher.score(cpu_views) - cpu_scores).abs().max())
    return {"model": sizes["model"], "image_size": side, "views": sizes["views"],
            "batch": sizes["batch"], "views_per_s": rate, "cpu_views": len(cpu_views),
            "cpu_threads": torch.get_num_threads(), "cpu_views_per_s": cpu_rate,
            "ratio": rate / cpu_rate, "max_abs_prob_diff_vs_fp32_cpu": diff}


def measure_training(sizes: dict, device: torch.device) -> dict:
    from ccd_ray.method.classifier import CAMClassifier
    from ccd_ray.method.training import train_step

    torch.manual_seed(0)
    model = CAMClassifier(sizes["backbone"], len(CLASSES)).to(device).train()
    optimizer = torch.optim.Adam(model.param_groups(1e-4, 10.0))
    n, side = sizes["train_batch"], sizes["image_size"]
    g = torch.Generator().manual_seed(2)
    first = torch.randn(n, 3, side, side, generator=g).to(device)
    second = torch.randn(n, 3, side, side, generator=g).to(device)
    targets = torch.rand(n, len(CLASSES), generator=g).to(device)
    weights = torch.ones(n, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(sizes["warmup"]):
        train_step(model, optimizer, first, second, targets, weights, beta=1.0)
    _sync(device)
    started = time.perf_counter()
    losses = [train_step(model, optimizer, first, second, targets, weights, beta=1.0)["loss"]
              for _ in range(sizes["steps"])]
    _sync(device)
    elapsed = time.perf_counter() - started
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"training produced non-finite losses: {losses}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"backbone": sizes["backbone"], "image_size": side, "batch": n,
            "steps": sizes["steps"], "steps_per_s": sizes["steps"] / elapsed,
            "images_per_s": sizes["steps"] * n / elapsed, "last_loss": losses[-1],
            "peak_gpu_memory_gib": peak}


def table(env: dict, teacher: dict, training: dict) -> str:
    dev = env["device_name"]
    rows = [
        "| measurement | device | setting | result |", "| --- | --- | --- | --- |",
        f"| teacher relabel, `Teacher.score_batched` ({env['teacher_precision']}) | {dev} | "
        f"{teacher['model']} {teacher['image_size']} px, {teacher['views']} views, batch "
        f"{teacher['batch']} | {teacher['views_per_s']:.1f} views/s |",
        f"| teacher relabel (fp32) | cpu, {teacher['cpu_threads']} threads | {teacher['model']}, "
        f"{teacher['cpu_views']} views | {teacher['cpu_views_per_s']:.1f} views/s |",
        f"| ratio | {env['device']} / cpu | | {teacher['ratio']:.1f}x |",
        f"| max abs probability difference vs fp32 CPU | {dev} | {teacher['cpu_views']} views | "
        f"{teacher['max_abs_prob_diff_vs_fp32_cpu']:.2e} |",
        f"| training, `train_step` ({env['train_precision']}, 2 views/image, Adam) | {dev} | "
        f"CAMClassifier {training['backbone']} {training['image_size']} px, batch "
        f"{training['batch']}, {training['steps']} steps | {training['steps_per_s']:.2f} steps/s, "
        f"{training['images_per_s']:.1f} images/s |",
    ]
    if training["peak_gpu_memory_gib"] is not None:
        rows.append(f"| peak GPU memory (training) | {dev} | | "
                    f"{training['peak_gpu_memory_gib']:.2f} GiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.allow_cpu:
        print(f"no GPU: nothing measured (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False; --allow-cpu runs a tiny CPU smoke test)")
        return 0
    device = torch.device("cuda" if has_cuda else "cpu")
    sizes = _sizes(args, tiny=not has_cuda)
    env = {"device": device.type,
           "device_name": torch.cuda.get_device_name(device) if has_cuda else "cpu (smoke run)",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(),
           "teacher_precision": "fp16 autocast" if has_cuda else "fp32, autocast off",
           "train_precision": "bf16 autocast" if has_cuda else "fp32, autocast off"}
    started = time.perf_counter()
    teacher = measure_teacher(sizes, device)
    training = measure_training(sizes, device)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"# GPU check: torch {env['torch']} (CUDA {env['cuda']}), {env['device_name']}, "
          f"Python {env['python']}, {env['wall_s']} s\n")
    print(table(env, teacher, training))
    if not has_cuda:
        print("\n(CPU smoke run at tiny sizes: these numbers say nothing about GPU speed)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"env": env, "sizes": sizes, "teacher": teacher, "training": training}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
