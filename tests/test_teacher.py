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


# --- scoring by model family: learned scale, sigmoid with the bias, auto ---------------------

def _saved_model(tmp_path, model_name: str, logit_scale: float, logit_bias: float | None = None
                 ) -> str:
    """A random model_name with its scale (and bias) set, saved as a local-dir checkpoint."""
    import math

    torch.manual_seed(5)
    model, *_ = load_clip(TeacherConfig(model=model_name, pretrained=None))
    model.logit_scale.data.fill_(math.log(logit_scale))
    if logit_bias is not None:
        model.logit_bias.data.fill_(logit_bias)
    return save_local_dir(model, model_name, tmp_path / f"{model_name}-{logit_scale}")


def _open_clip_logits(teacher: Teacher, views: torch.Tensor) -> torch.Tensor:
    """open_clip's own get_logits (learned scale and bias) on the class prompts."""
    from ccd_ray.method.teacher import open_clip_with_configs

    tokenizer = open_clip_with_configs().get_tokenizer("ccd-tiny-vit")
    tokens = tokenizer([t.format(n) for n in CLASSES.names for t in CLASSES.prompt_templates])
    with torch.no_grad():
        return teacher.model.get_logits(views, tokens)[0]


def test_null_logit_scale_is_the_models_learned_scale(views, tmp_path):
    assert TeacherConfig().logit_scale is None and TeacherConfig().scoring == "auto"
    spec = _saved_model(tmp_path, "ccd-tiny-vit", logit_scale=7.0)
    learned = _teacher(TeacherConfig(model=spec))
    assert learned.scoring == "softmax" and learned.logit_scale == pytest.approx(7.0)
    # the scores are open_clip's logits under a softmax over classes
    torch.testing.assert_close(learned.score(views),
                               _open_clip_logits(learned, views).softmax(dim=-1))
    fixed = _teacher(TeacherConfig(model=spec, logit_scale=100.0))
    assert fixed.logit_scale == 100.0
    # a sharper scale, the same ranking of classes in a view
    assert bool((fixed.score(views).max(1).values > learned.score(views).max(1).values).all())
    assert torch.equal(fixed.score(views).argmax(1), learned.score(views).argmax(1))


def test_sigmoid_scores_use_the_models_logit_bias(views, tmp_path):
    spec = _saved_model(tmp_path, "ccd-tiny-sigmoid", logit_scale=12.0, logit_bias=-2.5)
    teacher = _teacher(TeacherConfig(model=spec))
    assert teacher.scoring == "sigmoid"
    assert teacher.logit_scale == pytest.approx(12.0) and teacher.logit_bias == pytest.approx(-2.5)
    scores = teacher.score(views)
    torch.testing.assert_close(scores, torch.sigmoid(_open_clip_logits(teacher, views)))
    assert not torch.allclose(scores.sum(dim=1), torch.ones(len(views)))  # not a distribution
    # the same model without its bias scores higher everywhere: the bias is applied
    unbiased = Teacher(teacher.model, teacher.text_embeddings, teacher.image_size, teacher.mean,
                       teacher.std, teacher.logit_scale, teacher.device, scoring="sigmoid")
    assert bool((unbiased.score(views) > scores).all())


def test_auto_picks_the_rule_by_model_family(views, tmp_path):
    clip_spec = _saved_model(tmp_path, "ccd-tiny-vit", logit_scale=10.0)
    sigmoid_spec = _saved_model(tmp_path, "ccd-tiny-sigmoid", logit_scale=10.0, logit_bias=-3.0)
    assert _teacher(TeacherConfig(model=clip_spec)).scoring == "softmax"
    assert _teacher(TeacherConfig(model=sigmoid_spec)).scoring == "sigmoid"
    # softmax asked for on a sigmoid-family model: the bias cancels over classes
    forced = _teacher(TeacherConfig(model=sigmoid_spec, scoring="softmax"))
    torch.testing.assert_close(forced.score(views).sum(dim=1), torch.ones(len(views)))
    torch.testing.assert_close(forced.score(views),
                               _open_clip_logits(forced, views).softmax(dim=-1))
    with pytest.raises(ValueError, match="needs a model with a logit_bias"):
        _teacher(TeacherConfig(model=clip_spec, scoring="sigmoid"))


def test_scoring_and_scale_are_validated_and_enter_the_score_cache_key():
    from ccd_ray.config import ConfigError, load_config
    from ccd_ray.stages.score_cache import initial_key, key_hash

    names = [f"classes.names={list(TEST_CLASSES)}"]
    with pytest.raises(ConfigError, match="teacher.scoring"):
        load_config(overrides=names + ["teacher.scoring=tanh"])
    with pytest.raises(ConfigError, match="teacher.logit_scale"):
        load_config(overrides=names + ["teacher.logit_scale=-1"])
    keys = {key_hash(initial_key(load_config(overrides=names + extra)))
            for extra in ([], ["teacher.scoring=softmax"], ["teacher.scoring=sigmoid"],
                          ["teacher.logit_scale=100"])}
    assert len(keys) == 4
