"""The plain-versus-residual experiment of notebook 02 (course_lib.models.depth, course_lib.train.depth): small
and fast."""

import pytest
import torch

from course_lib.core.utils import seed_everything
from course_lib.models.depth import (
    DeepMLP,
    DeepMLPConfig,
    accuracy,
    gradient_norms_at_init,
    layer_gradient_norms,
    mean_loss,
)
from course_lib.train.depth import train_classifier


def toy_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated classes of 16-feature points."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    x = torch.randn(n, 16, generator=g) + 3.0 * (labels[:, None].float() * 2 - 1)
    return x, labels


def test_plain_and_residual_have_the_same_parameters_and_differ_only_by_the_skip():
    seed_everything(0)
    plain = DeepMLP(DeepMLPConfig(depth=4, width=16, residual=False, norm_groups=4, in_features=16, num_classes=2))
    seed_everything(0)
    res = DeepMLP(DeepMLPConfig(depth=4, width=16, residual=True, norm_groups=4, in_features=16, num_classes=2))
    assert plain.state_dict().keys() == res.state_dict().keys()
    for (k, a), b in zip(plain.state_dict().items(), res.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(5, 16)
    # Written out by hand: the residual network adds each layer's input back.
    h_plain = h_res = res.stem(x)
    for layer in res.layers:
        h_plain, h_res = layer(h_plain), h_res + layer(h_res)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain.head(torch.nn.functional.silu(plain.norm_out(h_plain))))
        torch.testing.assert_close(res(x), res.head(torch.nn.functional.silu(res.norm_out(h_res))))
        assert not torch.allclose(plain(x), res(x))


def test_deep_plain_gradients_vanish_without_norm_and_residual_ones_do_not():
    seed_everything(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(10, (64,))
    plain = DeepMLP(DeepMLPConfig(depth=20, residual=False, norm_groups=None))
    res = DeepMLP(DeepMLPConfig(depth=20, residual=True, norm_groups=None))
    g_plain, g_res = gradient_norms_at_init(plain, x, y), gradient_norms_at_init(res, x, y)
    assert g_plain.shape == g_res.shape == (20,)
    assert g_plain[0] < 1e-6 * g_plain[-1], "without normalisation the first layer's gradient vanishes"
    assert 0.2 < g_res[0] / g_res[-1] < 5, "with skips every layer gets a gradient of similar size"
    assert all(p.grad is None or not p.grad.any() for p in plain.parameters()), "the model is left unchanged"


def test_training_records_every_layer_and_learns_separable_data():
    seed_everything(0)
    x, y = toy_data()
    model = DeepMLP(DeepMLPConfig(depth=3, width=16, residual=True, norm_groups=4, in_features=16, num_classes=2))
    before = mean_loss(model, x, y)
    hist = train_classifier(model, x, y, steps=60, batch_size=32, lr=0.05)
    assert len(hist.losses) == 60 and hist.grad_norms.shape == (60, 3)
    assert hist.config["depth"] == 3 and hist.config["residual"] is True
    assert mean_loss(model, x, y) < 0.5 * before
    assert accuracy(model, x, y) > 0.95


def test_same_seed_same_batches_same_result():
    x, y = toy_data()
    runs = []
    for _ in range(2):
        seed_everything(1)
        m = DeepMLP(DeepMLPConfig(depth=2, width=8, norm_groups=2, in_features=16, num_classes=2))
        runs.append(train_classifier(m, x, y, steps=5, batch_size=16).losses)
    assert runs[0] == runs[1]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        DeepMLP(DeepMLPConfig(width=30, norm_groups=8))
    with pytest.raises(ValueError, match="depth must be a positive int"):
        DeepMLP(DeepMLPConfig(depth=0))
    model = DeepMLP(DeepMLPConfig(depth=2, width=8, norm_groups=2))
    with pytest.raises(ValueError, match="in_features=1024"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="backward"):
        layer_gradient_norms(model)
    with pytest.raises(ValueError, match="differ in length"):
        train_classifier(model, torch.randn(4, 784), torch.zeros(3, dtype=torch.long))
