"""research/label_transfer.py on a tiny hand-made label bundle (CPU, a few seconds): every
set is trained for every seed, the paired differences and shares come from those scores, and
an input mismatch with the pipeline's train-inputs is reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from research import label_transfer

SIDE, IMAGES, CLASSES = 32, 24, 3


@pytest.fixture(scope="module")
def transfer():
    # the module by its package name, which --workers' spawned processes import too
    return label_transfer


@pytest.fixture()
def bundle(transfer, tmp_path):
    """One world of random scenes: ground truth and a noisy copy of it as label sets."""
    rng = np.random.default_rng(0)
    scenes = rng.integers(0, 256, (IMAGES, 3, 24, 24), dtype=np.uint8)
    truth = (rng.random((IMAGES, CLASSES)) < 0.4).astype(np.float32)
    holdout = np.arange(IMAGES) % 3 == 0
    np.savez_compressed(tmp_path / transfer.world_file(0), ids=np.array([f"i{i}" for i in
                                                                         range(IMAGES)]),
                        scenes=scenes, holdout=holdout, truth=truth,
                        class_names=np.array(["a", "b", "c"]))
    backbone = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: v for k, v in backbone.items() if not k.startswith("fc.")},
               tmp_path / "backbone.pt")
    noisy = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 1).astype(np.float32)
    sha = transfer.inputs_sha256(transfer.student_inputs(scenes, SIDE))
    sets = []
    for key, labels in (("noisy", noisy), ("truth", truth)):
        np.save(tmp_path / f"{key}.npy", labels)
        sets.append({"world_seed": 0, "side": SIDE, "key": key, "name": key, "file": f"{key}.npy",
                     "pseudo_map": 50.0, "inputs_sha256": sha})
    (tmp_path / transfer.MANIFEST).write_text(json.dumps(
        {"backbone": str(tmp_path / "backbone.pt"), "sets": sets}))
    return tmp_path


def test_parse_seeds(transfer):
    assert transfer.parse_seeds(["0-3"]) == [0, 1, 2, 3]
    assert transfer.parse_seeds(["2", "5-6"]) == [2, 5, 6]
    with pytest.raises(SystemExit, match="twice"):
        transfer.parse_seeds(["0-2", "1"])


def test_every_set_and_seed_is_trained_and_paired(transfer, bundle, capsys):
    out = bundle / "scores.json"
    transfer.main(["--bundle", str(bundle), "--torch-seeds", "0-1", "--device", "cpu",
                   "--json", str(out)])
    printed = capsys.readouterr().out
    assert "world 0, side 32: inputs identical to the pipeline's train-inputs" in printed
    scores = json.loads(out.read_text())["scores"]
    assert set(scores) == {"0", "1"} and all(set(v) == {"0", "1"} for v in scores.values())
    noisy, truth = ([scores[i][s] for s in ("0", "1")] for i in ("0", "1"))
    assert all(0 <= v <= 100 for v in noisy + truth)
    paired = np.mean(np.subtract(truth, noisy))
    row = next(line for line in printed.splitlines() if line.startswith("| 32 | truth |"))
    assert f"{paired:+.1f} +- " in row  # against the world's first set, seed by seed
    noisy_row = next(line for line in printed.splitlines() if line.startswith("| 32 | noisy |"))
    assert f"{100 * np.mean(noisy) / np.mean(truth):.0f}%" in noisy_row


def test_a_resize_that_differs_from_the_pipeline_is_reported(transfer, bundle, capsys):
    manifest = json.loads((bundle / transfer.MANIFEST).read_text())
    for entry in manifest["sets"]:
        entry["inputs_sha256"] = "0" * 64
    (bundle / transfer.MANIFEST).write_text(json.dumps(manifest))
    transfer.main(["--bundle", str(bundle), "--torch-seeds", "0", "--device", "cpu"])
    assert "inputs DIFFERENT (another resize or encoding)" in capsys.readouterr().out


def test_students_decode_the_inputs_as_the_runs_stored_them(transfer, bundle):
    from ccd_ray.io.inputs_codec import round_trip

    raw = transfer.Bundle(bundle).pixels(0, SIDE).numpy()
    manifest = json.loads((bundle / transfer.MANIFEST).read_text())
    manifest["inputs"] = {"encoding": "jpeg", "quality": 50}
    (bundle / transfer.MANIFEST).write_text(json.dumps(manifest))
    stored = transfer.Bundle(bundle).pixels(0, SIDE).numpy()
    assert np.array_equal(stored, round_trip(raw, "jpeg", 50))
    assert not np.array_equal(stored, raw)  # q50 loses detail: the round trip did happen


def test_a_missing_backbone_is_a_clear_error(transfer, bundle):
    with pytest.raises(SystemExit, match="not a file: pass --backbone"):
        transfer.main(["--bundle", str(bundle), "--backbone", str(bundle / "none.pt")])


@pytest.mark.slow  # spawned processes each import torch
def test_worker_processes_give_the_same_scores_as_one_process(transfer, bundle):
    scores = {}
    for workers in (1, 2):
        out = bundle / f"workers-{workers}.json"
        transfer.main(["--bundle", str(bundle), "--torch-seeds", "0", "--device", "cpu",
                       "--workers", str(workers), "--json", str(out)])
        scores[workers] = json.loads(out.read_text())["scores"]
    assert scores[1] == scores[2]  # one thread per process on the CPU: bit-identical
