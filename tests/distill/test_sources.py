"""The teacher a user already has, from its own library: a torchvision architecture with a
state-dict file or published weights from torchvision's cache, an HF ``save_pretrained``
folder, a Python file's factory, an ONNX file run by ONNX Runtime. Each loads frozen, in eval
mode, answers with the original model's logits, and reports the input statistics its source
records; each wrong argument is named in the error."""
from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from deit.core.errors import CheckpointError, ConfigError, MissingCheckpointError
from deit.distill import sources
from deit.distill.sources import ForeignTeacher, foreign_source, load_foreign_teacher
from deit.models.teacher_output import teacher_logits

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def assert_frozen(teacher: ForeignTeacher) -> None:
    assert isinstance(teacher, ForeignTeacher)
    assert not teacher.module.training
    assert all(not p.requires_grad for p in teacher.module.parameters())


def assert_same_logits(teacher: ForeignTeacher, reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        expected = teacher_logits(reference.eval(), x)  # (B, K)
    got = teacher_logits(teacher.module, x)  # (B, K)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    return got


# --- which source a name denotes ---------------------------------------------------------------


def test_foreign_source_tells_each_form_and_leaves_the_others(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert foreign_source("torchvision:resnet18") == "torchvision"
    assert foreign_source(str(tmp_path / "teacher.onnx")) == "onnx"
    assert foreign_source("models/teacher.py:build") == "file"
    assert foreign_source(str(hf)) == "hf"
    for other in ("resnet20_32", "timm:resnet18", "ConvNeXt", str(tmp_path), "teacher.py", ""):
        assert foreign_source(other) is None, other
    with pytest.raises(ConfigError, match="resnet20_32"):
        load_foreign_teacher("resnet20_32", checkpoint=None, num_classes=3)


def test_importing_the_module_loads_no_optional_peer():
    tree = ast.parse(Path(sources.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not top & {"torchvision", "transformers", "onnx", "onnxruntime"}, top


# --- torchvision -------------------------------------------------------------------------------


def test_torchvision_architecture_with_a_state_dict_file(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(0)
    reference = get_model("resnet18", num_classes=5)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    teacher = load_foreign_teacher("torchvision:resnet18", checkpoint=path, num_classes=5)
    assert_frozen(teacher)
    assert_same_logits(teacher, reference, torch.randn(2, 3, 32, 32))
    assert (teacher.in_channels, teacher.num_classes, teacher.mean, teacher.std, teacher.input_size) == (
        3, 5, None, None, None)
    assert str(path) in teacher.description
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*resnet18 with num_classes=7.*fc\.weight"):
        load_foreign_teacher("torchvision:resnet18", checkpoint=path, num_classes=7)


def test_torchvision_names_and_missing_weights_are_named():
    with pytest.raises(ConfigError, match="resnet81.*close: resnet18"):
        load_foreign_teacher("torchvision:resnet81", checkpoint="x.pth", num_classes=5)
    with pytest.raises(MissingCheckpointError, match="--teacher-checkpoint.*IMAGENET1K_V1"):
        load_foreign_teacher("torchvision:resnet18", checkpoint=None, num_classes=5)
    with pytest.raises(MissingCheckpointError, match=r"nope\.pth is neither a file nor a weights name.*V1, DEFAULT"):
        load_foreign_teacher("torchvision:resnet18", checkpoint="nope.pth", num_classes=5)


def _squeezenet_cache(tmp_path, monkeypatch):
    """TORCH_HOME in ``tmp_path``; the path torchvision's cache expects SqueezeNet 1.1's weights at."""
    from torchvision.models import SqueezeNet1_1_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    return tmp_path / "hub" / "checkpoints" / os.path.basename(url), url


def test_torchvision_published_weights_from_the_cache(tmp_path, monkeypatch):
    from torchvision.models import get_model

    cached, _ = _squeezenet_cache(tmp_path, monkeypatch)
    torch.manual_seed(0)
    reference = get_model("squeezenet1_1", num_classes=1000)  # random weights standing in for ImageNet's
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    x = torch.randn(2, 3, 64, 64)
    for name in ("IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", "DEFAULT"):
        teacher = load_foreign_teacher("torchvision:squeezenet1_1", checkpoint=name, num_classes=5)
        assert_frozen(teacher)
        assert_same_logits(teacher, reference, x)
        assert teacher.mean == pytest.approx(IMAGENET_MEAN) and teacher.std == pytest.approx(IMAGENET_STD)
        assert (teacher.input_size, teacher.num_classes, teacher.in_channels) == (224, 1000, 3)
        assert "SqueezeNet1_1_Weights.IMAGENET1K_V1 (from TORCH_HOME cache)" in teacher.description


def test_torchvision_published_weights_missing_offline_name_the_cache_path(tmp_path, monkeypatch):
    cached, url = _squeezenet_cache(tmp_path, monkeypatch)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingCheckpointError) as info:
        load_foreign_teacher("torchvision:squeezenet1_1", checkpoint="IMAGENET1K_V1", num_classes=5)
    assert str(cached) in str(info.value) and url in str(info.value)
    assert "\n" not in str(info.value)


# --- HF transformers folder --------------------------------------------------------------------


def test_hf_folder_with_its_image_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64, num_labels=5)
    reference = ViTForImageClassification(config).eval()
    folder = tmp_path / "hf"
    reference.save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3, size={"height": 16, "width": 16}
                      ).save_pretrained(folder)
    assert foreign_source(str(folder)) == "hf"
    teacher = load_foreign_teacher(str(folder), checkpoint=None, num_classes=5)
    assert_frozen(teacher)
    assert_same_logits(teacher, reference, torch.randn(2, 3, 16, 16))
    assert teacher.mean == pytest.approx((0.5,) * 3) and teacher.std == pytest.approx((0.25,) * 3)
    assert (teacher.input_size, teacher.in_channels, teacher.num_classes) == (16, 3, 5)
    with pytest.raises(ConfigError, match="--teacher-checkpoint"):
        load_foreign_teacher(str(folder), checkpoint="w.pth", num_classes=5)


def test_hf_processor_rescaling_is_folded_into_the_statistics():
    settings = {"do_resize": True, "size": {"shortest_edge": 32}, "do_center_crop": True,
                "crop_size": {"height": 28, "width": 28}, "do_rescale": False, "do_normalize": True,
                "image_mean": [127.5], "image_std": [63.75]}
    assert sources._hf_preprocessing(settings, 1) == (pytest.approx((0.5,)), pytest.approx((0.25,)), 28)
    assert sources._hf_preprocessing({"size": {"shortest_edge": 32}, "do_normalize": False}, 3) == (
        (0.0,) * 3, (1.0,) * 3, 32)


# --- a Python file's factory -------------------------------------------------------------------

TEACHER_FILE = '''
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    pretrained_cfg = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "input_size": (3, 16, 16)}

    def __init__(self, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def build(num_classes=10):
    model = TinyNet(num_classes)
    own = Path(__file__).with_name("own.pt")
    if own.exists():
        model.load_state_dict(torch.load(own, weights_only=True))
    return model


def not_a_model():
    return 42
'''


def _tiny_net(path: Path, num_classes: int) -> nn.Module:
    spec = importlib.util.spec_from_file_location("reference_teacher_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TinyNet(num_classes)
    nn.init.normal_(model.bn.running_mean)  # eval-mode BatchNorm statistics that are not the identity
    nn.init.uniform_(model.bn.running_var, 0.5, 2.0)
    return model


def test_file_factory_with_its_own_weights_and_with_a_checkpoint(tmp_path):
    path = tmp_path / "teacher.py"
    path.write_text(TEACHER_FILE)
    torch.manual_seed(0)
    own, other = _tiny_net(path, 4), _tiny_net(path, 4)
    torch.save(own.state_dict(), tmp_path / "own.pt")  # the factory loads this itself
    torch.save(other.state_dict(), tmp_path / "other.pt")
    x = torch.randn(3, 3, 16, 16)

    teacher = load_foreign_teacher(f"{path}:build", checkpoint=None, num_classes=4)
    assert_frozen(teacher)
    assert_same_logits(teacher, own, x)
    assert (teacher.mean, teacher.std, teacher.input_size) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 16)
    assert (teacher.in_channels, teacher.num_classes) == (3, 4)
    assert "factory's own weights" in teacher.description

    teacher = load_foreign_teacher(f"{path}:build", checkpoint=tmp_path / "other.pt", num_classes=4)
    assert_frozen(teacher)
    assert_same_logits(teacher, other, x)
    with pytest.raises(ConfigError, match=r"teacher\.py:build\(num_classes=6\) failed \(RuntimeError"):
        load_foreign_teacher(f"{path}:build", checkpoint=None, num_classes=6)  # its own 4-class weights
    (tmp_path / "own.pt").unlink()
    other_file = re.escape(str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match=rf"{other_file}.*build\(num_classes=6\).*fc\.weight"):
        load_foreign_teacher(f"{path}:build", checkpoint=tmp_path / "other.pt", num_classes=6)


def test_file_factory_errors_name_the_file_and_the_factory(tmp_path):
    path = tmp_path / "teacher.py"
    path.write_text(TEACHER_FILE)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} defines no callable 'make'.*build"):
        load_foreign_teacher(f"{path}:make", checkpoint=None, num_classes=4)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:not_a_model\(\) returned a int; expected a torch"):
        load_foreign_teacher(f"{path}:not_a_model", checkpoint=None, num_classes=4)
    with pytest.raises(MissingCheckpointError, match=rf"{re.escape(str(tmp_path / 'absent.py'))} not found"):
        load_foreign_teacher(f"{tmp_path / 'absent.py'}:build", checkpoint=None, num_classes=4)


# --- ONNX --------------------------------------------------------------------------------------


def _export_onnx(model: nn.Module, path: Path, metadata: dict | None) -> None:
    """As ``deit export`` writes a file: TorchScript-based exporter, dynamic batch, JSON
    ``metadata_props``."""
    import onnx

    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 16, 16),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    graph = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        graph.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(graph, str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_onnx_file_run_by_onnxruntime(tmp_path):
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 5))
    path, bare = tmp_path / "teacher.onnx", tmp_path / "bare.onnx"
    _export_onnx(reference, path, {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "image_size": 16})
    _export_onnx(reference, bare, None)
    x = torch.randn(3, 3, 16, 16)

    teacher = load_foreign_teacher(str(path), checkpoint=None, num_classes=5, threads=1)
    assert_frozen(teacher)
    logits = assert_same_logits(teacher, reference, x)
    assert logits.dtype == x.dtype and logits.shape == (3, 5)
    assert (teacher.in_channels, teacher.input_size, teacher.num_classes) == (3, 16, 5)
    assert teacher.mean == pytest.approx((0.5, 0.4, 0.3)) and teacher.std == pytest.approx((0.2, 0.25, 0.3))
    options = teacher.module.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert (teacher.module.intra_op_num_threads, teacher.module.inter_op_num_threads) == (1, 1)
    torch.testing.assert_close(copy.deepcopy(teacher.module)(x), logits)  # deep copies reopen the session

    teacher = load_foreign_teacher(str(bare), checkpoint=None, num_classes=5, threads=2)
    assert (teacher.mean, teacher.std, teacher.input_size) == (None, None, 16)
    assert teacher.module.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ConfigError, match=r"bare\.onnx takes input \(\?, 3, 16, 16\); got \(1, 3, 8, 8\)"):
        teacher.module(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="--teacher-checkpoint"):
        load_foreign_teacher(str(bare), checkpoint="w.pth", num_classes=5)
    with pytest.raises(MissingCheckpointError, match=rf"{re.escape(str(tmp_path / 'absent.onnx'))} not found"):
        load_foreign_teacher(str(tmp_path / "absent.onnx"), checkpoint=None, num_classes=5)
