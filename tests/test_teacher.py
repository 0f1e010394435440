"""The tiny open_clip teacher: scoring, and weights surviving both checkpoint formats."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TEST_CLASSES

from ccd_ray.config import ClassesConfig, TeacherConfig
from ccd_ray.method.teacher import Teacher, load_clip, save_local_dir

CLASSES = ClassesConfig(names=list(TEST_CLASSES))


def _teacher(cfg: TeacherConfig) -> Teacher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Teacher.from_config(cfg, CLASSES)


@pytest.fixture(scope="module")
def views(tiny_teacher):
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, tiny_teacher.image_size, tiny_teacher.image_size, generator=g)


def test_tiny_teacher_loads(tiny_teacher):
    assert tiny_teacher.image_size == 64
    assert tiny_teacher.text_embeddings.shape == (len(TEST_CLASSES), 64)
    torch.testing.assert_close(tiny_teacher.text_embeddings.norm(dim=1),
                               torch.ones(len(TEST_CLASSES)))
    assert len(tiny_teacher.mean) == 3 and len(tiny_teacher.std) == 3
    assert not any(p.requires_grad for p in tiny_teacher.model.parameters())
    assert not tiny_teacher.model.training


def test_scores_are_distributions(tiny_teacher, views):
    scores = tiny_teacher.score(views)
    assert scores.shape == (5, len(TEST_CLASSES))
    assert bool((scores >= 0).all()) and bool((scores <= 1).all())
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(5))
    # different images, different scores (the model is not constant)
    assert not torch.allclose(scores[0], scores[1])


def test_identical_views_identical_scores(tiny_teacher, views):
    batch = torch.cat([views[:1], views[:1], views[1:2], views[:1]])
    scores = tiny_teacher.score(batch)
    assert torch.equal(scores[0], scores[1]) and torch.equal(scores[0], scores[3])
    # batching does not change a view's score
    torch.testing.assert_close(tiny_teacher.score(views[:1])[0], scores[0], rtol=1e-5, atol=1e-6)


def test_score_batched_and_counts_passes(tiny_teacher, views):
    before = tiny_teacher.forward_passes
    batched = tiny_teacher.score_batched(views, batch_size=2)
    assert tiny_teacher.forward_passes - before == 3
    torch.testing.assert_close(batched, tiny_teacher.score(views), rtol=1e-5, atol=1e-6)
    empty = tiny_teacher.score(views[:0])
    assert empty.shape == (0, len(TEST_CLASSES))
    assert tiny_teacher.score_batched(views[:0], 4).shape == (0, len(TEST_CLASSES))


def test_score_rejects_bad_shapes(tiny_teacher):
    with pytest.raises(ValueError, match="N x 3"):
        tiny_teacher.score(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError):
        tiny_teacher.score(torch.zeros(2, 1, 64, 64))


def test_logit_scale_sharpens(tiny_teacher, views):
    soft = Teacher(tiny_teacher.model, tiny_teacher.text_embeddings, 64, tiny_teacher.mean,
                   tiny_teacher.std, logit_scale=1.0, device=tiny_teacher.device)
    s_soft, s_sharp = soft.score(views), tiny_teacher.score(views)
    assert bool((s_soft.max(dim=1).values <= s_sharp.max(dim=1).values + 1e-6).all())
    assert torch.equal(s_soft.argmax(1), s_sharp.argmax(1))


def test_checkpoint_file_round_trip(tiny_teacher, views, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_teacher.model.state_dict(), path)
    loaded = _teacher(TeacherConfig(model="ccd-tiny-vit", pretrained=str(path)))
    assert torch.equal(loaded.text_embeddings, tiny_teacher.text_embeddings)
    assert torch.equal(loaded.score(views), tiny_teacher.score(views))
    # a fresh random model is different, so the equality above is the checkpoint's doing
    torch.manual_seed(999)
    fresh = _teacher(TeacherConfig(model="ccd-tiny-vit", pretrained=None))
    assert not torch.allclose(fresh.score(views), tiny_teacher.score(views))


def test_local_dir_round_trip(tiny_teacher, views, tmp_path):
    spec = save_local_dir(tiny_teacher.model, "ccd-tiny-vit", tmp_path / "teacher")
    assert spec == f"local-dir:{tmp_path / 'teacher'}"
    written = json.loads((tmp_path / "teacher" / "open_clip_config.json").read_text())
    assert written["model_cfg"]["embed_dim"] == 64
    loaded = _teacher(TeacherConfig(model=spec))
    assert loaded.image_size == tiny_teacher.image_size
    assert loaded.mean == pytest.approx(tiny_teacher.mean)
    assert torch.equal(loaded.score(views), tiny_teacher.score(views))


def test_missing_checkpoint_file_raises(tmp_path):
    for name in ("nope.pt", "nope.safetensors", "sub/dir/weights"):
        with pytest.raises(FileNotFoundError, match="teacher.pretrained"):
            load_clip(TeacherConfig(model="ccd-tiny-vit", pretrained=str(tmp_path / name)))


def test_local_dir_without_weights_raises(tiny_teacher, tmp_path):
    folder = tmp_path / "teacher"
    save_local_dir(tiny_teacher.model, "ccd-tiny-vit", folder)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_clip(TeacherConfig(model=f"local-dir:{folder}"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(TeacherConfig(model=f"local-dir:{tmp_path / 'empty'}"))
