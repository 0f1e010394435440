"""The CAM classifier: shapes, logits as the CAMs' mean, checkpoint round trip, predict."""

from __future__ import annotations

import pytest
import torch

from ccd_ray.method.classifier import (
    CAMClassifier,
    load_classifier,
    predict,
    prepare_images,
    save_classifier,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CAMClassifier("resnet18", 5)
    # a non-trivial head and BN statistics, so a round trip that dropped them would show
    with torch.no_grad():
        m.head.weight.normal_(0, 0.5)
        m.body[1].running_mean.uniform_(-0.1, 0.1)
    return m.eval()


def _images(count, seed=0, sizes=((40, 56), (64, 64), (33, 20))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *sizes[i % len(sizes)]), dtype=torch.uint8, generator=g)
            for i in range(count)]


@pytest.mark.parametrize("size, grid", [(32, 1), (64, 2)])
def test_forward_shapes_and_logits_are_cam_means(model, size, grid):
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        logits, cams = model(x)
    assert logits.shape == (3, 5)
    assert cams.shape == (3, 5, grid, grid)
    torch.testing.assert_close(logits, cams.mean(dim=(2, 3)))


def test_head_is_a_bias_free_1x1_conv(model):
    assert model.head.kernel_size == (1, 1) and model.head.bias is None
    assert model.head.in_channels == 512 and model.head.out_channels == 5
    groups = model.param_groups(1e-4, 10.0)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    head_params = list(groups[1]["params"])
    assert len(head_params) == 1 and head_params[0] is model.head.weight


def test_unknown_backbone_and_missing_weights():
    with pytest.raises(ValueError, match="resnet18"):
        CAMClassifier("vgg16", 3)
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        CAMClassifier("resnet18", 3, weights="/nonexistent/resnet18.pth")


def test_backbone_weights_from_local_file(tmp_path):
    import torchvision
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(resnet.state_dict(), path)
    model = CAMClassifier("resnet18", 3, weights=str(path))
    torch.testing.assert_close(model.body[0].weight, resnet.conv1.weight)
    # a file missing body weights is refused
    torch.save({"fc.weight": resnet.fc.weight}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lacks"):
        CAMClassifier("resnet18", 3, weights=str(tmp_path / "partial.pth"))


def test_prepare_images():
    images = _images(3)
    x = prepare_images(images, 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    white = prepare_images([torch.full((3, 10, 30), 255, dtype=torch.uint8)], 16)[0]
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(white, expected.view(3, 1, 1).expand(3, 16, 16))


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "clf.pt"
    save_classifier(path, model, ["a", "b", "c", "d", "e"], 64)
    loaded, names, size = load_classifier(path)
    assert names == ["a", "b", "c", "d", "e"] and size == 64
    assert not loaded.training and loaded.backbone == "resnet18"
    x = prepare_images(_images(4), 64)
    with torch.no_grad():
        a_logits, a_cams = model(x)
        b_logits, b_cams = loaded(x)
    assert torch.equal(a_logits, b_logits) and torch.equal(a_cams, b_cams)
    # a freshly built model does not give these outputs
    torch.manual_seed(123)
    with torch.no_grad():
        assert not torch.allclose(CAMClassifier("resnet18", 5).eval()(x)[0], a_logits)


def test_predict_probabilities(model):
    images = _images(5)
    probs = predict(model, images, 32, batch_size=2)
    assert probs.shape == (5, 5)
    assert bool((probs >= 0).all()) and bool((probs <= 1).all())
    with torch.no_grad():
        expected = torch.sigmoid(model(prepare_images(images, 32))[0])
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert predict(model, [], 32).shape == (0, 5)
