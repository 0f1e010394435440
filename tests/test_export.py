"""The standalone classifier export (ccd_ray.method.export): loaded in a fresh process where
ccd_ray cannot be imported, it gives classifier.predict's probabilities on the same images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import torch
from conftest import make_classifier

from ccd_ray.method.classifier import load_classifier, predict
from ccd_ray.method.export import METADATA_FILE, STANDALONE_FILE, export_standalone

CLASSES = ["circle", "square", "triangle"]
# Same torch build and thread count on both sides, so the two are expected to agree to float
# rounding; 1e-5 on probabilities leaves room for a different kernel choice, not for a
# different resize, normalisation or class order (those move them by 1e-2 or more).
TOLERANCE = 1e-5

# Runs under `python -I` in a temporary folder: no PYTHONPATH, no user site, no current
# folder on sys.path; the editable install's import hook is refused by the finder below.
STANDALONE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class RefuseCcdRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ccd_ray" or name.startswith("ccd_ray."):
                raise ImportError("ccd_ray is blocked in this process")
            return None

    sys.meta_path.insert(0, RefuseCcdRay())
    try:
        import ccd_ray  # noqa: F401
        sys.exit("ccd_ray was importable: the check would prove nothing")
    except ImportError:
        pass

    import torch
    extra = {%(meta)r: ""}
    model = torch.export.load(%(file)r, extra_files=extra).module()
    batches = torch.load("inputs.pt", weights_only=True)
    with torch.no_grad():
        probs = [model(b) for b in batches]
    try:
        model(batches[0].float())
        refused_float = False
    except Exception:
        refused_float = True
    torch.save({"probs": probs, "meta": json.loads(extra[%(meta)r]),
                "refused_float": refused_float,
                "ccd_ray_loaded": any(m.startswith("ccd_ray") for m in sys.modules)},
               "outputs.pt")
""") % {"meta": METADATA_FILE, "file": STANDALONE_FILE}


def test_export_runs_without_ccd_ray_and_matches_predict(tmp_path):
    _, checkpoint = make_classifier(CLASSES, seed=5)
    (tmp_path / STANDALONE_FILE).write_bytes(export_standalone(checkpoint))
    generator = torch.Generator().manual_seed(0)
    # one batch per image size (the export resizes a whole batch; predict one image at a time)
    batches = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
               for shape in [(3, 3, 50, 70), (1, 3, 97, 33), (2, 3, 64, 64), (1, 3, 1, 1)]]
    torch.save(batches, tmp_path / "inputs.pt")
    (tmp_path / "standalone.py").write_text(STANDALONE_SCRIPT)

    result = subprocess.run([sys.executable, "-I", "standalone.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert not out["ccd_ray_loaded"]
    assert out["refused_float"], "the program must refuse float input (its dtype guard)"
    model, names, image_size = load_classifier(io.BytesIO(checkpoint))
    assert out["meta"]["class_names"] == names == CLASSES
    assert out["meta"]["image_size"] == image_size == 64
    for batch, probs in zip(batches, out["probs"]):
        expected = predict(model, list(batch), image_size)
        assert probs.shape == (len(batch), len(CLASSES))
        assert torch.allclose(probs, expected, atol=TOLERANCE, rtol=0), \
            float((probs - expected).abs().max())


def test_export_preprocessing_is_the_training_inputs():
    """A wrong resize (no antialias) moves the probabilities well beyond the tolerance, so
    the comparison above can fail."""
    model, checkpoint = make_classifier(CLASSES, seed=5)
    images = torch.randint(0, 256, (2, 3, 200, 150), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrong = torch.sigmoid(model(((torch.nn.functional.interpolate(
            images.float(), size=(64, 64), mode="bilinear", antialias=False).round() / 255.0
            - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)))[0])
    assert (wrong - predict(model, list(images), 64)).abs().max() > 100 * TOLERANCE
    extra = {METADATA_FILE: ""}
    program = torch.export.load(io.BytesIO(export_standalone(checkpoint)), extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["class_names"] == CLASSES
    assert torch.allclose(program.module()(images), predict(model, list(images), 64),
                          atol=TOLERANCE, rtol=0)
