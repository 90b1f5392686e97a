"""Small-image ResNet (He et al. 2016, §4.2): shapes, the paper's parameter count, timm's
layout and init rules (timm/models/resnet.py), stochastic depth, the timm interface, and
files: a ResNet checkpoint is recognised by its shapes."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from deit import ResNet, build_from_checkpoint, create_model, list_models, save_model
from deit.models.registry import model_family
from tests.helpers import perturb_

RESNETS = [n for n in list_models() if model_family(n) == "resnet"]
SHAPES = {"resnet8_32": ((16, 32, 64), (1, 1, 1)), "resnet14_32": ((16, 32, 64), (2, 2, 2)),
          "resnet20_32": ((16, 32, 64), (3, 3, 3)), "resnet8w4_32": ((64, 128, 256), (1, 1, 1)),
          "resnet14w2_32": ((32, 64, 128), (2, 2, 2))}


def perturb_bn_stats_(model: nn.Module) -> nn.Module:
    """Running statistics away from (0, 1), so eval-mode comparisons exercise them."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_registered_variants_and_their_shapes():
    assert sorted(RESNETS) == sorted(SHAPES)
    for name, (widths, depths) in SHAPES.items():
        config = create_model(name).config
        assert (tuple(config["widths"]), tuple(config["depths"]), config["stem_width"]) == (widths, depths, widths[0])


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_output_and_feature_shapes(name, channels, size):
    model = create_model(name, num_classes=10, in_channels=channels).eval()
    width = SHAPES[name][0][-1]
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, channels, size, size))
        assert features.shape == (2, width, math.ceil(size / 4), math.ceil(size / 4))  # 28 -> 7, 32 -> 8
        assert model.forward_head(features).shape == (2, 10)
        assert model.forward_head(features, pre_logits=True).shape == (2, width) == (2, model.num_features)
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_gradients_reach_every_parameter_and_the_input(name):
    model = create_model(name, num_classes=10).train()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    model(x).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]
    # at init every residual branch ends in a zero gamma: the gammas are what receive its signal
    assert all(block.bn2.weight.grad.abs().sum() > 0 for stage in model.stages() for block in stage)
    assert x.grad.abs().sum() > 0


def test_resnet20_parameter_count_is_the_papers_027m():
    """He et al. 2016, §4.2 / Table 6: ResNet-20 has 0.27M parameters (10 classes).

    Exactly, with option-B shortcuts (1x1 conv + BN where the shape changes):
    stem 3*16*9 + 2*16 = 464; stage 1: 3 x (2*16*16*9 + 4*16) = 14,016;
    stage 2: 16*32*9 + 32*32*9 + 4*32 + (16*32 + 2*32) + 2 x (2*32*32*9 + 4*32) = 51,648;
    stage 3: 32*64*9 + 64*64*9 + 4*64 + (32*64 + 2*64) + 2 x (2*64*64*9 + 4*64) = 205,696;
    classifier 64*10 + 10 = 650; in all 272,474. Without the two projection shortcuts
    (2,752 parameters: the paper's option A) it is 269,722.
    """
    model = create_model("resnet20_32", num_classes=10)
    total = sum(p.numel() for p in model.parameters())
    shortcuts = sum(p.numel() for n, p in model.named_parameters() if ".downsample." in n)
    assert total == 272_474 and shortcuts == 2_752
    assert round((total - shortcuts) / 1e6, 2) == round(total / 1e6, 2) == 0.27
    # 6n+2 weighted layers: 1 stem + 2 per block + 1 classifier (shortcuts not counted, as in the paper)
    layers = 1 + 2 * sum(len(stage) for stage in model.stages()) + 1
    assert layers == 20


@pytest.mark.parametrize("name, count", [("resnet8_32", 78_042), ("resnet14_32", 175_258), ("resnet20_32", 272_474),
                                         ("resnet8w4_32", 1_227_594), ("resnet14w2_32", 696_618)])
def test_parameter_counts_at_10_classes_as_documented(name, count):
    assert sum(p.numel() for p in create_model(name, num_classes=10).parameters()) == count


def test_zero_init_last_makes_each_block_its_shortcut_at_init():
    """Goyal et al. 2017, §5.1: gamma = 0 in the last BN of a block, so it computes
    relu(shortcut(x)) at init: relu(x) for a stride-1 block of unchanged width."""
    model = create_model("resnet14_32", num_classes=10).eval()
    block = model.layer1[1]
    assert block.downsample is None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), torch.relu(x))
        for stage in model.stages():
            for block in stage:
                assert torch.count_nonzero(block.bn2.weight) == 0
                x = torch.randn(2, block.conv1.in_channels, 8, 8)
                shortcut = x if block.downsample is None else block.downsample(x)
                torch.testing.assert_close(block(x.clone()), torch.relu(shortcut))
    assert all(torch.all(m.weight == 1) for n, m in model.named_modules()
               if isinstance(m, nn.BatchNorm2d) and not n.endswith("bn2"))


def test_convolutions_are_kaiming_normal_fan_out():
    """timm's ResNet.init_weights (as torchvision): std = sqrt(2 / (out_channels * k * k))."""
    torch.manual_seed(0)
    conv = create_model("resnet20_32").layer3[2].conv1  # 64 x 64 x 3 x 3: 36,864 draws
    want = math.sqrt(2.0 / (64 * 3 * 3))
    assert conv.weight.std().item() == pytest.approx(want, rel=0.03)
    assert abs(conv.weight.mean().item()) < 0.05 * want


def test_stochastic_depth_rates_and_train_mode_only():
    model = ResNet(num_classes=10, widths=(8, 16, 32), depths=(1, 2, 2), drop_path_rate=0.4)
    rates = [block.drop_path.drop_prob for stage in model.stages() for block in stage]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # linear over all blocks, as timm's make_blocks
    perturb_bn_stats_(perturb_(model))  # non-zero gammas: the branches count
    plain = ResNet(num_classes=10, widths=(8, 16, 32), depths=(1, 2, 2))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        model.eval(), plain.eval()
        torch.testing.assert_close(model(x), plain(x))  # eval: no branch is dropped
        model.train(), plain.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
        assert not torch.allclose(first, second)  # train: other branches dropped per draw
        torch.testing.assert_close(plain(x), plain(x))  # (batch statistics alone are deterministic)


def test_drop_path_rates_equal_timms():
    from timm.models.resnet import BasicBlock
    from timm.models.resnet import ResNet as TimmResNet

    ours = ResNet(widths=(16, 32, 64), depths=(3, 3, 3), drop_path_rate=0.2)
    theirs = TimmResNet(block=BasicBlock, layers=(3, 3, 3), channels=(16, 32, 64), drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in (theirs.layer1, theirs.layer2, theirs.layer3)
             for b in stage]
    assert [b.drop_path.drop_prob for stage in ours.stages() for b in stage] == pytest.approx(rates)


def test_reset_classifier_get_classifier_and_no_weight_decay():
    from deit.train.optim import param_groups

    model = create_model("resnet14_32", num_classes=10)
    assert model.get_classifier() is model.fc and model.no_weight_decay() == set()
    model.reset_classifier(4)
    assert model.get_classifier() is model.fc and model.num_classes == model.config["num_classes"] == 4
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity) and model(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    decay, no_decay = param_groups(create_model("resnet8_32"), 0.05)
    assert all(p.ndim == 4 for p in decay["params"][:-1]) and decay["params"][-1].ndim == 2  # kernels, fc
    assert all(p.ndim == 1 for p in no_decay["params"])  # BN gammas / betas and the fc bias


def test_key_layout_is_timms_and_a_timm_resnet_of_the_same_shapes_computes_the_same():
    """timm's ResNet builds any number of stages (``channels``), but its stem is the ImageNet
    one (64-wide 7x7 stride-2 conv + max pool) and its forward runs layer1..layer4. With that
    stem swapped for ours (3x3, stride 1, no pooling) and layer4 an identity, the two are the
    same network, key for key."""
    from timm.models.resnet import BasicBlock
    from timm.models.resnet import ResNet as TimmResNet

    theirs = TimmResNet(block=BasicBlock, layers=(3, 3, 3), channels=(16, 32, 64), num_classes=10)
    ours = perturb_bn_stats_(perturb_(ResNet(num_classes=10, widths=(16, 32, 64), depths=(3, 3, 3),
                                             stem_width=64))).eval()
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(ours_shapes) == list(theirs_shapes)  # same keys, same order
    assert {k for k in ours_shapes if ours_shapes[k] != theirs_shapes[k]} == {"conv1.weight"}  # 3x3 vs 7x7
    theirs.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)
    theirs.maxpool, theirs.layer4 = nn.Identity(), nn.Identity()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs.eval()(x), atol=1e-5, rtol=1e-5)


def test_registered_key_names_follow_timms_convention():
    """The default stem (widths[0] channels) needs no shortcut in layer1: timm's rule
    (a projection only where stride or width change)."""
    keys = {k.rsplit(".", 1)[0] for k in create_model("resnet20_32", num_classes=10).state_dict()}
    want = {"conv1", "bn1", "fc"}
    for i in range(1, 4):
        for j in range(3):
            want |= {f"layer{i}.{j}.conv1", f"layer{i}.{j}.bn1", f"layer{i}.{j}.conv2", f"layer{i}.{j}.bn2"}
        if i > 1:
            want |= {f"layer{i}.0.downsample.0", f"layer{i}.0.downsample.1"}
    assert keys == want


def test_bad_configurations_name_the_value():
    with pytest.raises(ValueError, match=r"widths=\(16, 32\) and depths=\(1, 1, 1\).*equal length"):
        ResNet(widths=(16, 32), depths=(1, 1, 1))
    with pytest.raises(ValueError, match="must be non-empty"):
        ResNet(widths=(), depths=())
    with pytest.raises(ValueError, match=r"depths\[1\]=0 is invalid"):
        ResNet(widths=(16, 32), depths=(1, 0))
    with pytest.raises(ValueError, match=r"widths\[0\]=-16 is invalid"):
        ResNet(widths=(-16, 32), depths=(1, 1))
    with pytest.raises(ValueError, match="stem_width=0 is invalid"):
        ResNet(stem_width=0)
    with pytest.raises(ValueError, match="drop_path_rate=1.0 is invalid"):
        ResNet(drop_path_rate=1.0)
    with pytest.raises(ValueError, match=r"expected an image batch of shape \(batch, 3, H, W\), got \(1, 1, 32, 32\)"):
        create_model("resnet8_32")(torch.randn(1, 1, 32, 32))




# --- files --------------------------------------------------------------------------------------

def test_own_file_round_trip_and_a_plain_state_dict_is_recognised(tmp_path):
    model = perturb_bn_stats_(perturb_(create_model("resnet14_32", num_classes=10, in_channels=1))).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    rebuilt, _ = build_from_checkpoint(save_model(model, tmp_path / "r14.safetensors"))
    torch.save(model.state_dict(), tmp_path / "plain.pth")  # timm's format: keys and shapes only
    inferred, report = build_from_checkpoint(tmp_path / "plain.pth")
    assert inferred.model_name == "resnet14_32" and (inferred.num_classes, inferred.in_channels) == (10, 1)
    assert "ResNet widths=[16, 32, 64], depths=[2, 2, 2], stem_width=16" in report.notes[0]
    with torch.no_grad():
        for other in (rebuilt, inferred):
            torch.testing.assert_close(other.eval()(x), want)


def test_unregistered_resnet_shapes_build_the_closest_variant(tmp_path):
    source = perturb_(ResNet(num_classes=5, widths=(16, 32, 64), depths=(3, 3, 4), stem_width=32)).eval()
    torch.save(source.state_dict(), tmp_path / "deeper.pth")
    ours, report = build_from_checkpoint(tmp_path / "deeper.pth")
    assert ours.model_name == "resnet20_32"  # same widths, nearest block counts
    assert ours.config["depths"] == [3, 3, 4] and ours.config["stem_width"] == 32
    assert any("built resnet20_32 with explicit overrides depths=[3, 3, 4], stem_width=32" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), source(x))


def test_imagenet_resnet_files_are_refused_by_name(tmp_path):
    import timm

    from deit import CheckpointError

    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"r18.pth: conv1.weight \(64, 3, 7, 7\) is a 7x7 stem.*timm:<name>"):
        build_from_checkpoint(tmp_path / "r18.pth")


def test_a_head_of_another_size_is_reinitialised_and_grey_weights_adapt(tmp_path):
    from deit import load_pretrained

    source = perturb_(create_model("resnet8_32", num_classes=10))
    save_model(source, tmp_path / "r8.pth")
    target = create_model("resnet8_32", num_classes=3)
    report = load_pretrained(target, tmp_path / "r8.pth")
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(target.layer3[0].conv2.weight, source.layer3[0].conv2.weight)


def test_cli_info_convert_and_predict_on_a_resnet_checkpoint(tmp_path, capsys):
    from PIL import Image

    from deit.cli import main

    model = perturb_(create_model("resnet8_32", num_classes=10, in_channels=1))
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    assert main(["info", str(tmp_path / "plain.pth")]) == 0
    out = capsys.readouterr().out
    assert "model: resnet8_32 (ResNet)" in out and "widths = [16, 32, 64]" in out and "in_channels = 1" in out
    converted, image = tmp_path / "r8.safetensors", tmp_path / "digit.png"
    assert main(["convert", str(tmp_path / "plain.pth"), str(converted)]) == 0
    capsys.readouterr()
    Image.new("L", (28, 28), 128).save(image)
    assert main(["predict", "--checkpoint", str(converted), "--json", str(image)]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) >= 1 and all(0 <= c["index"] < 10 for c in top)
