"""Pretrained configurations against timm's own (timm/models/deit.py, convnext.py) and the
official release names (facebookresearch/deit README_deit.md); ImageNet labels against timm."""
from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config

from deit import MissingCheckpointError, create_model, get_pretrained_cfg, list_models
from deit.models.pretrained import class_names
from tests.helpers import perturb_

OFFICIAL = [n for n in list_models() if n.startswith("deit_") and "patch16" in n]
CONVNEXT = [n for n in list_models() if n.startswith("convnext_") and not n.endswith("_32")]
SMALL = [n for n in list_models() if n.endswith(("_32", "_28"))]
FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes", "crop_mode")


def _timm_cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


def _fields(get) -> dict:
    return {f: tuple(get(f)) if isinstance(get(f), (tuple, list)) else get(f) for f in FIELDS}


def test_every_registered_name_has_a_configuration():
    assert set(OFFICIAL) == set(timm.list_models("deit_*patch16*")) - set(timm.list_models("deit3_*"))
    assert set(OFFICIAL) | set(CONVNEXT) | set(SMALL) == set(list_models())
    for name in list_models():
        cfg = get_pretrained_cfg(name)
        assert cfg.input_size[0] == 3 and cfg.data_config()["image_size"] == cfg.input_size[1]
        assert cfg.has_weights == (name not in SMALL)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_values_equal_timm(name):
    ours, theirs = get_pretrained_cfg(name), _timm_cfg(name)
    assert _fields(lambda f: getattr(ours, f)) == _fields(theirs.__getitem__)
    official, hub = ours.weights
    assert official.url == theirs["url"] and hub.hf_hub_id == theirs["hf_hub_id"]
    assert (official.layout, hub.layout) == ("official", "timm")


@pytest.mark.parametrize("name", CONVNEXT)
def test_convnext_values_equal_timm_for_the_tag_whose_file_is_listed(name):
    ours = get_pretrained_cfg(name)
    theirs = _timm_cfg(f"{name}.{ours.tag}")
    assert _fields(lambda f: getattr(ours, f)) == _fields(theirs.__getitem__)
    direct, hub = ours.weights
    assert direct.url == theirs["url"] and hub.hf_hub_id == theirs["hf_hub_id"]
    assert direct.sha256 is None and hub.sha256 is None  # no checksum is published for these files


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_file_names_carry_the_sha256_prefix(name):
    official = get_pretrained_cfg(name).weights[0]
    assert official.url.endswith("/" + official.file_name)
    # torch.hub's HASH_REGEX: the hex digits after the last '-' are the SHA-256 prefix
    assert re.fullmatch(rf"{name}-([0-9a-f]{{8}})\.pth", official.file_name).group(1) == official.sha256


@pytest.mark.parametrize("name", ["deit_small_distilled_patch16_224", "deit_base_distilled_patch16_384",
                                  "convnext_nano"])
def test_data_config_equals_timm_resolve_data_config(name):
    ours = get_pretrained_cfg(name).data_config()
    theirs = resolve_data_config(pretrained_cfg=_timm_cfg(f"{name}.{get_pretrained_cfg(name).tag}"))
    assert ours == {"image_size": theirs["input_size"][1], "in_channels": theirs["input_size"][0],
                    "mean": list(theirs["mean"]), "std": list(theirs["std"]), "crop_pct": theirs["crop_pct"],
                    "interpolation": theirs["interpolation"], "crop_mode": theirs["crop_mode"]}


@pytest.mark.parametrize("name", SMALL)
def test_small_image_variants_have_no_published_weights(name):
    cfg = get_pretrained_cfg(name)
    side = int(name.rsplit("_", 1)[1])  # the registered input size ends the name
    assert cfg.label_set is None and cfg.weights == () and cfg.input_size == (3, side, side)
    with pytest.raises(MissingCheckpointError, match=rf"'{name}' has no published weights.*deit train --model {name}"):
        create_model(name, pretrained=True)


def test_imagenet_names_and_synsets_come_from_timm():
    names, ids = class_names("imagenet-1k")
    info = ImageNetInfo("imagenet-1k")
    assert len(names) == len(ids) == 1000 and len(set(ids)) == 1000
    assert ids == info.label_names()
    assert names == [info.index_to_description(i) for i in range(1000)]
    assert (names[0], ids[0]) == ("tench, Tinca tinca", "n01440764")
    assert all(get_pretrained_cfg(n).label_set == "imagenet-1k" for n in OFFICIAL + CONVNEXT)


def test_unknown_names_are_errors_with_suggestions():
    with pytest.raises(ValueError, match="unknown model name 'deit_smal_patch16_224'.*did you mean deit_small_patch16_224"):
        get_pretrained_cfg("deit_smal_patch16_224")
    with pytest.raises(ValueError, match="unknown label set 'imagenet-22k'"):
        class_names("imagenet-22k")


@pytest.mark.slow
@pytest.mark.parametrize("name, copy, where", [
    ("deit_tiny_patch16_224", 0, "checkpoint_dir"),  # official {'model': state_dict} .pth
    ("convnext_atto", 0, "cache"),  # timm's release file: a timm state dict (1x1-conv MLPs)
    ("deit_tiny_distilled_patch16_224", 1, "cache"),  # timm's hub copy: safetensors
])
def test_pretrained_true_loads_a_published_file_placed_by_hand(tmp_path, monkeypatch, name, copy, where):
    """A published file copied by hand under its published name: the model equals timm's with
    the same weights."""
    from safetensors.torch import save_file

    reference = perturb_(timm.create_model(name, pretrained=False)).eval()
    weight = get_pretrained_cfg(name).weights[copy]
    folder = tmp_path / where
    folder.mkdir()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if weight.layout == "official":
        torch.save({"model": state}, folder / weight.file_name)
    elif weight.file_name.endswith(".safetensors"):
        save_file(state, str(folder / weight.file_name))
    else:
        torch.save(state, folder / weight.file_name)
    monkeypatch.setenv("DEIT_CACHE", str(tmp_path / "cache"))
    model = create_model(name, pretrained=True, checkpoint_dir=tmp_path / "checkpoint_dir").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # a DeiT's forward also returns its teacher's output: compare the student's
        ours = model.student_model(x) if hasattr(model, "student_model") else model(x)
        torch.testing.assert_close(ours, reference(x), rtol=1e-4, atol=1e-4)


def test_docs_list_every_published_file():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for name in OFFICIAL + CONVNEXT:
        cfg = get_pretrained_cfg(name)
        direct, hub = cfg.weights
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` | http"))
        assert direct.url in row and f"`{hub.hf_hub_id}`" in row and f"| {cfg.crop_pct} |" in row, row
        assert (f"| {direct.sha256} |" if direct.sha256 else "| none published |") in row, row
