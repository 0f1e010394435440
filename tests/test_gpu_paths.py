"""GPU readiness of the code paths, exercised on the CPU: device choice, GPU requests of the
actor pools, autocast switched off (and results exact) on the CPU, contradictory configs
rejected, and benchmarks/gpu_check.py's no-GPU and CPU smoke paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from script_modules import load_script

from ccd_ray.config import ConfigError
from ccd_ray.method import scoring
from ccd_ray.method.classifier import CAMClassifier
from ccd_ray.method.training import step_losses, train_step
from ccd_ray.stages import actors, datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cuda(monkeypatch):
    """This process sees no CUDA device, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def autocast_calls(monkeypatch):
    """Record (device_type, dtype, enabled) of every torch.autocast(...) and the autocast
    state seen inside it, delegating to the real context manager."""
    calls = []
    real = torch.autocast

    class Recorder:
        def __init__(self, device_type, dtype=None, enabled=True, **kwargs):
            calls.append((device_type, dtype, enabled))
            self._inner = real(device_type, dtype=dtype, enabled=enabled, **kwargs)

        def __enter__(self):
            return self._inner.__enter__()

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

    monkeypatch.setattr(torch, "autocast", Recorder)
    return calls


# --- scoring.pick_device ---------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_pick_device_without_cuda_is_cpu(make_config, no_cuda, device):
    assert scoring.pick_device(make_config(f"compute.device={device}")) == torch.device("cpu")


def test_pick_device_cuda_without_cuda_is_a_clear_error(make_config, no_cuda):
    with pytest.raises(RuntimeError, match=r"compute\.device is 'cuda'.*no CUDA device") as info:
        scoring.pick_device(make_config("compute.device=cuda"))
    assert "compute.gpus_per_actor" in str(info.value)  # says how to fix it


def test_pick_device_with_cuda(make_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scoring.pick_device(make_config("compute.device=auto")) == torch.device("cuda")
    assert scoring.pick_device(make_config("compute.device=cuda")) == torch.device("cuda")
    assert scoring.pick_device(make_config("compute.device=cpu")) == torch.device("cpu")


def test_actor_with_cuda_device_fails_at_construction_not_deep_in_torch(make_config, no_cuda):
    cfg = make_config("compute.device=cuda")
    with pytest.raises(RuntimeError, match=r"compute\.device"):
        actors.InitialViewScorer(cfg.to_dict())


# --- datasets.actor_pool_args: GPU requests of the actor pools -------------------------------

def test_pool_requests_no_gpu_by_default(make_config):
    pool = datasets.actor_pool_args(make_config("compute.cpus_per_actor=2",
                                                "compute.images_per_batch=8"), 3)
    assert "num_gpus" not in pool
    assert pool["num_cpus"] == 2.0 and pool["batch_size"] == 8
    assert isinstance(pool["batch_size"], int)  # Ray Data needs an int batch size with GPUs
    assert (pool["compute"].min_size, pool["compute"].max_size) == (1, 3)


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1.0, 2.0])
def test_pool_passes_gpus_through(make_config, gpus):
    pool = datasets.actor_pool_args(make_config(f"compute.gpus_per_actor={gpus}"), 4)
    assert pool["num_gpus"] == gpus  # fractional: several actors share one GPU
    assert pool["compute"].max_size == 4


# --- Teacher.score and train_step on the CPU ------------------------------------------------

def test_teacher_score_on_cpu_is_plain_fp32(tiny_teacher, autocast_calls):
    assert tiny_teacher.device.type == "cpu"
    views = torch.randn(6, 3, tiny_teacher.image_size, tiny_teacher.image_size,
                        generator=torch.Generator().manual_seed(5))
    seen = []
    hook = tiny_teacher.model.visual.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    try:
        scores = tiny_teacher.score(views)
    finally:
        hook.remove()
    assert autocast_calls == [("cpu", torch.float16, False)]
    assert seen == [(False, torch.float32)]
    with torch.no_grad():
        features = torch.nn.functional.normalize(tiny_teacher.model.encode_image(views), dim=-1)
        manual = (tiny_teacher.logit_scale * features @ tiny_teacher.text_embeddings.T
                  ).softmax(dim=-1)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, manual, rtol=1e-6, atol=1e-7)


def test_views_are_cropped_on_the_teachers_device(tiny_teacher):
    """score_views hands crop_views the uint8 image on the teacher's device, so the teacher
    receives views already there (shown with the meta device, which records shapes only)."""
    import numpy as np

    meta = copy.copy(tiny_teacher)
    meta.device = torch.device("meta")
    received = []

    def score_batched(views, batch_size):
        received.append(views.device)
        return torch.zeros(len(views), tiny_teacher.text_embeddings.shape[0])

    meta.score_batched = score_batched
    images = [torch.zeros(3, 40, 50, dtype=torch.uint8), torch.zeros(3, 30, 20, dtype=torch.uint8)]
    boxes = [np.array([[0, 0, 50, 40], [5, 5, 30, 20]]), np.array([[0, 0, 20, 30]])]
    scores = scoring.score_views(meta, images, boxes, batch_size=4)
    assert received == [torch.device("meta")] and [len(s) for s in scores] == [2, 1]


def test_train_step_on_cpu_is_plain_fp32(autocast_calls):
    torch.manual_seed(0)
    model = CAMClassifier("resnet18", 4).train()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.param_groups(1e-3, 10.0))
    reference_optimizer = torch.optim.Adam(reference.param_groups(1e-3, 10.0))
    g = torch.Generator().manual_seed(1)
    first, second = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    targets, weights = torch.rand(4, 4, generator=g), torch.rand(4, generator=g)

    seen = []
    hook = model.head.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    try:
        losses = train_step(model, optimizer, first, second, targets, weights, beta=0.5)
    finally:
        hook.remove()
    assert autocast_calls == [("cpu", torch.bfloat16, False)]
    assert seen == [(False, torch.float32)] * 2  # both views, neither under autocast

    manual = step_losses(reference, first, second, targets, weights, 0.5)  # no autocast at all
    reference_optimizer.zero_grad(set_to_none=True)
    manual["loss"].backward()
    reference_optimizer.step()
    assert losses == pytest.approx({k: float(v.detach()) for k, v in manual.items()}, rel=1e-6)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


# --- config: contradictory device settings --------------------------------------------------

def test_use_gpu_with_cpu_device_is_rejected(make_config):
    with pytest.raises(ConfigError, match=r"compute\.use_gpu.*compute\.device='cpu'"):
        make_config("compute.use_gpu=true", "compute.device=cpu")


def test_gpus_per_actor_with_cpu_device_is_rejected(make_config):
    with pytest.raises(ConfigError, match=r"compute\.gpus_per_actor=0\.25.*compute\.device='cpu'"):
        make_config("compute.gpus_per_actor=0.25", "compute.device=cpu")


@pytest.mark.parametrize("overrides", [
    ("compute.use_gpu=true", "compute.device=auto"),
    ("compute.use_gpu=true", "compute.device=cuda", "compute.gpus_per_actor=0.25"),
    ("compute.use_gpu=false", "compute.device=cpu", "compute.gpus_per_actor=0"),
])
def test_consistent_device_settings_validate(make_config, overrides):
    make_config(*overrides)


# --- benchmarks/gpu_check.py (run in this process: torch and open_clip are already loaded) ---

def _gpu_check_module():
    return load_script(ROOT / "benchmarks" / "gpu_check.py", "gpu_check")


def test_gpu_check_without_gpu_measures_nothing(no_cuda, capsys, monkeypatch):
    module = _gpu_check_module()
    monkeypatch.setattr(module, "measure_teacher", None)  # must not be reached
    assert module.main([]) == 0
    assert "no GPU: nothing measured" in capsys.readouterr().out


def test_gpu_check_cpu_smoke_run(no_cuda, capsys, tmp_path):
    assert _gpu_check_module().main(["--allow-cpu", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "| measurement | device | setting | result |" in out
    assert "views/s" in out and "steps/s" in out
    numbers = json.loads((tmp_path / "out.json").read_text())
    assert numbers["sizes"]["backbone"] == "resnet18"  # the tiny sizes, not the GPU ones
    assert numbers["teacher"]["views_per_s"] > 0 and numbers["training"]["steps_per_s"] > 0
    # on the CPU both teachers are the same fp32 computation
    assert numbers["teacher"]["max_abs_prob_diff_vs_fp32_cpu"] == 0.0
