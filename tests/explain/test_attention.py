"""Explainability: attention maps, rollout, cls/dist similarity, overlays."""
from __future__ import annotations

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deit.deploy.predict import Predictor
from deit.explain.attention import (
    attention_maps,
    attention_rollout,
    discard_lowest,
    format_similarity,
    fuse_heads,
    overlay,
    token_similarity,
    unit_range,
    visualize,
)
from deit.models import create_model
from deit.models.layers import Block, plain_forward
from deit.weights.layouts import save_model
from tests.helpers import perturb_

DEIT = "deit_pico_distilled_patch4_32"
VIT = "deit_pico_patch4_32"


def tiny(name: str = DEIT, **kw) -> torch.nn.Module:
    kw = {"num_classes": 10, "in_channels": 1, **kw}
    return perturb_(create_model(name, **kw)).eval()


def attention_io(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every block's attention module in a plain forward pass."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [b.attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
               for b in model.blocks]
    try:
        with torch.no_grad(), plain_forward():
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def grey_image(path, size=(50, 40)) -> Image.Image:
    """A grey image with a bright square, saved to ``path`` (width, height = size)."""
    g = torch.Generator().manual_seed(1)
    pixels = (torch.rand(size[1], size[0], generator=g) * 120).to(torch.uint8)
    pixels[10:25, 20:35] = 250
    image = Image.fromarray(pixels.numpy(), mode="L")
    image.save(path)
    return image


# --- attention maps ------------------------------------------------------------------------

@pytest.mark.parametrize("name, prefix", [(DEIT, 2), (VIT, 1)])
def test_attention_maps_reproduce_the_models_attention_output(name, prefix):
    model = tiny(name)
    x = torch.randn(2, 1, 32, 32)
    assert Block.fast_inference  # the default no-grad fast path must not hide the attention
    maps = attention_maps(model, x)
    assert Block.fast_inference  # restored
    io = attention_io(model, x)
    assert len(maps) == len(io) == len(model.blocks) == 6
    n = model.patch_embed.num_patches + prefix
    for attn_map, (inp, out), block in zip(maps, io, model.blocks):
        assert attn_map.shape == (2, 2, n, n)  # (B, heads, N, N)
        assert torch.allclose(attn_map.sum(-1), torch.ones(2, 2, n), atol=1e-5)
        assert attn_map.min() >= 0
        attn = block.attn
        B, N, D = inp.shape
        v = F.linear(inp, attn.qkv.weight[2 * D:], attn.qkv.bias[2 * D:])  # (B, N, D): v slice of fused qkv
        v = v.reshape(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, N, hd)
        mixed = (attn_map @ v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        assert torch.allclose(attn.proj(mixed), out, atol=1e-5)
    # not just any stochastic matrix: the maps differ between layers and between images
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)
    assert not torch.allclose(maps[0][0], maps[0][1], atol=1e-3)


def test_attention_maps_in_training_mode_are_deterministic_and_modes_restored():
    model = create_model(DEIT, num_classes=10, in_channels=1, encoder_attention_dropout=0.5,
                         encoder_dropout=0.5, dropout=0.5)
    x = torch.randn(1, 1, 32, 32)
    model.train()
    model.blocks[3].eval()  # a mixed-mode model keeps its exact per-module modes
    first, second = attention_maps(model, x), attention_maps(model, x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # dropout off while tracing
    assert model.training and not model.blocks[3].training and model.blocks[2].training
    assert torch.allclose(torch.stack(first), torch.stack(attention_maps(model.eval(), x)))


def test_attention_maps_match_timm_attention_probabilities():
    from deit.bench.harness import timm_equivalent

    ours = perturb_(create_model(DEIT, num_classes=10, in_channels=1)).eval()
    peer = timm_equivalent(ours).eval()
    peer.load_state_dict(ours.state_dict(), strict=True)
    probs: list[torch.Tensor] = []
    for block in peer.blocks:
        block.attn.fused_attn = False  # timm then materialises softmax(q kᵀ·scale) before attn_drop
        block.attn.attn_drop.register_forward_hook(lambda m, args, out: probs.append(out))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        peer(x)
    ours_maps = attention_maps(ours, x)
    assert len(probs) == len(ours_maps)
    for a, b in zip(ours_maps, probs):
        assert torch.allclose(a, b, atol=1e-6)


def test_attention_maps_reject_other_models():
    with pytest.raises(ValueError, match="ViT or DeiT"):
        attention_maps(torch.nn.Linear(3, 3), torch.randn(1, 3))


# --- rollout -------------------------------------------------------------------------------

def layer(rows0: list[list[float]], n: int = 4) -> torch.Tensor:
    """(1, H, n, n): row 0 of head h is rows0[h]; every other row attends to itself."""
    heads = []
    for row in rows0:
        a = torch.eye(n, dtype=torch.float64)
        a[0] = torch.tensor(row, dtype=torch.float64)
        heads.append(a)
    return torch.stack(heads)[None]


def reference_rollout(maps, token, prefix, fusion="mean"):
    """The rollout definition in plain Python: fuse, 0.5·A + 0.5·I, row-normalise, R = Â_L … Â_1."""
    fuse = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[fusion]
    n = maps[0].shape[-1]
    r = [[float(i == j) for j in range(n)] for i in range(n)]
    for m in maps:
        a = [[fuse([float(m[0, h, i, j]) for h in range(m.shape[1])]) for j in range(n)] for i in range(n)]
        a = [[0.5 * a[i][j] + 0.5 * (i == j) for j in range(n)] for i in range(n)]
        a = [[v / sum(row) for v in row] for row in a]
        r = [[sum(a[i][k] * r[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    flow = r[token][prefix:]
    lo, hi = min(flow), max(flow)
    return [(v - lo) / (hi - lo) for v in flow]


def test_rollout_by_hand_two_layers():
    # cls + 3 patches. Layer 1: cls attends half to itself, half to patch 1 -> Â1 row 0 = [.75, .25, 0, 0].
    # Layer 2: cls attends half to itself, half to patch 2 -> Â2 row 0 = [.75, 0, .25, 0].
    # R = Â2·Â1, row 0 = .75·[.75, .25, 0, 0] + .25·[0, 0, 1, 0] = [.5625, .1875, .25, 0]
    # patches [.1875, .25, 0] -> min-max [.75, 1, 0].
    a1 = layer([[0.5, 0.5, 0.0, 0.0]])
    a2 = layer([[0.5, 0.0, 0.5, 0.0]])
    flow = attention_rollout([a1, a2], 0, num_prefix_tokens=1)
    assert flow.shape == (1, 3)
    assert torch.allclose(flow, torch.tensor([[0.75, 1.0, 0.0]], dtype=torch.float64))
    # the order matters (Â1·Â2 would give [1, .75, 0]) and so does the residual (A2·A1 alone: [.5, 1, 0])
    assert torch.allclose(attention_rollout([a2, a1], 0, num_prefix_tokens=1),
                          torch.tensor([[1.0, 0.75, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("fusion, expected", [("mean", [0.5, 1.0, 0.0]), ("max", [1.0, 0.5, 0.0]),
                                              ("min", [0.0, 1.0, 0.0])])
def test_rollout_head_fusion_by_hand(fusion, expected):
    # two heads, row 0: [.1, .6, .3, 0] and [.1, 0, .5, .4]
    # mean [.1, .3, .4, .2] -> patches of Â [.15, .2, .1]   -> [.5, 1, 0]
    # max  [.1, .6, .5, .4] -> patches ∝ [.3, .25, .2]     -> [1, .5, 0]
    # min  [.1, 0, .3, 0]   -> patches ∝ [0, .15, 0]       -> [0, 1, 0]
    maps = [layer([[0.1, 0.6, 0.3, 0.0], [0.1, 0.0, 0.5, 0.4]])]
    flow = attention_rollout(maps, 0, head_fusion=fusion, num_prefix_tokens=1)
    assert torch.allclose(flow, torch.tensor([expected], dtype=torch.float64))


def test_fuse_heads_values():
    a = torch.tensor([[[[0.2, 0.8], [0.5, 0.5]], [[0.6, 0.4], [0.1, 0.9]]]])  # (1, 2, 2, 2)
    assert torch.allclose(fuse_heads(a, "mean"), torch.tensor([[[0.4, 0.6], [0.3, 0.7]]]))
    assert torch.allclose(fuse_heads(a, "max"), torch.tensor([[[0.6, 0.8], [0.5, 0.9]]]))
    assert torch.allclose(fuse_heads(a, "min"), torch.tensor([[[0.2, 0.4], [0.1, 0.5]]]))


def test_rollout_matches_reference_with_row_normalisation():
    # rows of max/min-fused heads do not sum to 1: the re-normalisation after adding I matters
    h0 = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.3, 0.3, 0.1, 0.1, 0.2], [0.0, 0.5, 0.5, 0.0, 0.0],
                       [0.25, 0.25, 0.25, 0.0, 0.25], [0.6, 0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    h1 = torch.tensor([[0.5, 0.0, 0.0, 0.1, 0.4], [0.1, 0.1, 0.6, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.0, 0.0, 0.1, 0.9, 0.0], [0.3, 0.3, 0.0, 0.2, 0.2]], dtype=torch.float64)
    l1 = torch.stack([h0, h1])[None]  # (1, 2, 5, 5)
    l2 = torch.stack([h1.flip(0), h0.flip(1)])[None]
    l2 = l2 / l2.sum(-1, keepdim=True)
    maps = [l1, l2]
    for fusion in ("mean", "max", "min"):
        for token in (0, 1):
            expected = torch.tensor([reference_rollout(maps, token, 2, fusion)], dtype=torch.float64)
            got = attention_rollout(maps, token, head_fusion=fusion, num_prefix_tokens=2)
            assert got.shape == (1, 3)
            assert torch.allclose(got, expected, atol=1e-12), (fusion, token)
    # without the re-normalisation the max-fused answer would differ: the test can tell
    fused = [fuse_heads(m, "max")[0] for m in maps]
    eye = torch.eye(5, dtype=torch.float64)
    unnormalised = (0.5 * fused[1] + 0.5 * eye) @ (0.5 * fused[0] + 0.5 * eye)
    assert not torch.allclose(unit_range(unnormalised[0:1, 2:]),
                              attention_rollout(maps, 0, head_fusion="max", num_prefix_tokens=2), atol=1e-3)


def test_rollout_per_sample_in_a_batch():
    a = layer([[0.5, 0.5, 0.0, 0.0]])
    b = layer([[0.2, 0.0, 0.3, 0.5]])
    batch = attention_rollout([torch.cat([a, b]), torch.cat([b, a])], 0, num_prefix_tokens=1)
    assert torch.allclose(batch[0], attention_rollout([a, b], 0, num_prefix_tokens=1)[0])
    assert torch.allclose(batch[1], attention_rollout([b, a], 0, num_prefix_tokens=1)[0])


def test_rollout_of_identity_and_uniform_attention_is_uniform():
    eye = torch.eye(6).expand(2, 3, 6, 6)  # (B, H, N, N)
    uniform = torch.full((2, 3, 6, 6), 1 / 6)
    for maps in ([eye, eye, eye], [uniform, uniform], [eye, uniform]):
        for token in (0, 1):
            flow = attention_rollout(maps, token, num_prefix_tokens=2)
            assert flow.shape == (2, 4)
            assert torch.equal(flow, torch.zeros(2, 4))  # every patch equal: nothing stands out
    # a real model gives a non-trivial map in [0, 1] reaching both ends
    flow = attention_rollout(attention_maps(tiny(), torch.randn(2, 1, 32, 32)), 1, num_prefix_tokens=2)
    assert flow.shape == (2, 64)
    assert torch.allclose(flow.amin(-1), torch.zeros(2)) and torch.allclose(flow.amax(-1), torch.ones(2))


def test_discard_lowest_never_touches_diagonal_or_prefix_columns():
    a = torch.tensor([[[0.01, 0.30, 0.20, 0.49],
                       [0.01, 0.01, 0.90, 0.08],
                       [0.01, 0.50, 0.01, 0.48],
                       [0.01, 0.05, 0.60, 0.34]]])  # (1, 4, 4), cls = column 0
    # candidates: off-diagonal, columns 1..3 -> 9 values: .30 .20 .49 | .90 .08 | .50 .48 | .05 .60
    # ratio 0.5 -> floor(4.5) = 4 lowest discarded: .05, .08, .20, .30
    expected = torch.tensor([[[0.01, 0.00, 0.00, 0.49],
                              [0.01, 0.01, 0.90, 0.00],
                              [0.01, 0.50, 0.01, 0.48],
                              [0.01, 0.00, 0.60, 0.34]]])
    assert torch.equal(discard_lowest(a, 0.5, num_prefix_tokens=1), expected)
    assert torch.equal(discard_lowest(a, 0.0, num_prefix_tokens=1), a)
    assert torch.equal(a[0, 0, 1], torch.tensor(0.30))  # input untouched
    # with two prefix tokens column 1 is protected too: candidates .20 .49 | .90 .08 | .48 | .60 -> drop .08, .20, .48
    two = discard_lowest(a, 0.5, num_prefix_tokens=2)
    assert torch.equal(two[0, :, 1], a[0, :, 1])
    assert (two == 0).sum() == 3 and two[0, 1, 3] == 0 and two[0, 0, 2] == 0 and two[0, 2, 3] == 0


def test_rollout_with_discard_ratio_uses_the_discarded_matrices():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 2, 6, 6, generator=g, dtype=torch.float64).softmax(-1) for _ in range(3)]
    assert torch.equal(attention_rollout(maps, 0, discard_ratio=0.0, num_prefix_tokens=2),
                       attention_rollout(maps, 0, num_prefix_tokens=2))
    pruned = [discard_lowest(fuse_heads(m, "mean"), 0.6, 2)[:, None] for m in maps]  # already fused: 1 head
    expected = attention_rollout(pruned, 0, num_prefix_tokens=2)
    got = attention_rollout(maps, 0, discard_ratio=0.6, num_prefix_tokens=2)
    assert torch.allclose(got, expected, atol=1e-12)
    assert not torch.allclose(got, attention_rollout(maps, 0, num_prefix_tokens=2), atol=1e-3)
    assert torch.allclose(torch.tensor([reference_rollout(pruned, 0, 2)], dtype=torch.float64), got, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"token_index": 2}, "token_index"),
    ({"token_index": -1}, "token_index"),
    ({"token_index": 1, "num_prefix_tokens": 1}, "token_index"),
    ({"token_index": True}, "token_index"),
    ({"head_fusion": "median"}, "head_fusion"),
    ({"discard_ratio": 1.0}, "discard_ratio"),
    ({"discard_ratio": -0.1}, "discard_ratio"),
    ({"discard_ratio": "0.5"}, "discard_ratio"),
    ({"num_prefix_tokens": 0}, "num_prefix_tokens"),
    ({"num_prefix_tokens": 6}, "num_prefix_tokens"),
    ({"num_prefix_tokens": None}, "num_prefix_tokens"),
])
def test_rollout_bad_arguments_name_the_parameter(kwargs, match):
    maps = [torch.full((1, 2, 6, 6), 1 / 6)] * 2
    args = {"token_index": 0, "num_prefix_tokens": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        attention_rollout(maps, args.pop("token_index"), **args)


@pytest.mark.parametrize("maps", [[], torch.ones(1, 2, 6, 6), [torch.ones(2, 6, 6)], [torch.ones(1, 2, 6, 5)],
                                  [torch.ones(1, 2, 6, 6), torch.ones(2, 2, 6, 6)],
                                  [torch.ones(1, 2, 6, 6, dtype=torch.long)]])
def test_rollout_bad_maps(maps):
    with pytest.raises(ValueError, match="maps"):
        attention_rollout(maps, 0, num_prefix_tokens=2)


# --- cls / dist similarity -------------------------------------------------------------------

def test_token_similarity_values():
    model = tiny()
    x = torch.randn(3, 1, 32, 32)
    sims = token_similarity(model, x)
    assert len(sims) == len(model.blocks) + 1 == 7
    assert all(-1.0 <= s <= 1.0 for s in sims)
    # encoder input: the two learned tokens plus their position rows, the same for every image
    cls_in = (model.cls_token + model.pos_embed[:, :1])[0, 0].detach()
    dist_in = (model.dist_token + model.pos_embed[:, 1:2])[0, 0].detach()
    assert sims[0] == pytest.approx(float(F.cosine_similarity(cls_in, dist_in, dim=0)), abs=1e-6)
    # after each block: what the model's own (fast-path) forward computes, averaged over the batch
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        for i, block in enumerate(model.blocks, start=1):
            h = block(h)
            expected = F.cosine_similarity(h[:, 0], h[:, 1], dim=-1).mean()
            assert sims[i] == pytest.approx(float(expected), abs=1e-5)
    assert len({round(s, 4) for s in sims}) > 3  # the similarity changes through the encoder


def test_token_similarity_is_one_when_the_tokens_are_equal():
    model = tiny()
    with torch.no_grad():
        model.dist_token.copy_(model.cls_token)
        model.pos_embed[:, 1].copy_(model.pos_embed[:, 0])
    sims = token_similarity(model, torch.randn(2, 1, 32, 32))
    assert sims == pytest.approx([1.0] * 7, abs=1e-5)


def test_token_similarity_needs_a_distillation_token():
    with pytest.raises(ValueError, match="distillation token"):
        token_similarity(tiny(VIT), torch.randn(1, 1, 32, 32))


def test_format_similarity():
    text = format_similarity([0.06, 0.5, 0.93])
    lines = text.splitlines()
    assert len(lines) == 4 and "cls/dist" in lines[0]
    assert "input" in lines[1] and "+0.0600" in lines[1]
    assert "block 2" in lines[3] and "+0.9300" in lines[3]
    assert "no distillation token" in format_similarity([])


# --- overlay ---------------------------------------------------------------------------------

def test_overlay_blends_the_colormap():
    image = Image.new("L", (30, 20), color=100)
    mask = torch.zeros(2, 2)
    mask[:, 0] = 1.0  # left half hot
    out = overlay(image, mask, alpha=1.0)
    assert out.size == (30, 20) and out.mode == "RGB"
    hot = tuple(int(c) for c in matplotlib.colormaps["jet"](1.0, bytes=True)[:3])  # dark red
    cold = tuple(int(c) for c in matplotlib.colormaps["jet"](0.0, bytes=True)[:3])  # dark blue
    assert hot[0] > 100 and hot[2] == 0 and cold[2] > 100 and cold[0] == 0
    assert out.getpixel((0, 10)) == hot and out.getpixel((29, 10)) == cold
    assert out.getpixel((14, 10)) not in (hot, cold)  # bilinear upsampling: a gradient in between
    assert overlay(image, mask, alpha=0.0).tobytes() == image.convert("RGB").tobytes()
    half = overlay(image, torch.ones(3, 3), alpha=0.5).getpixel((15, 10))
    assert all(abs(got - (0.5 * 100 + 0.5 * h)) <= 1 for got, h in zip(half, hot))
    inferno = overlay(image, torch.ones(1, 1), alpha=1.0, cmap="inferno").getpixel((0, 0))
    assert inferno == tuple(int(c) for c in matplotlib.colormaps["inferno"](1.0, bytes=True)[:3])
    assert overlay(Image.new("RGB", (7, 5)), torch.rand(8, 8)).size == (7, 5)


@pytest.mark.parametrize("kwargs, match", [({"alpha": 1.5}, "alpha"), ({"cmap": "viridis"}, "cmap"),
                                           ({"mask_2d": torch.ones(2, 2, 2)}, "mask_2d"),
                                           ({"image": torch.ones(3, 4, 4)}, "image")])
def test_overlay_bad_arguments(kwargs, match):
    args = {"image": Image.new("RGB", (8, 8)), "mask_2d": torch.ones(2, 2)} | kwargs
    with pytest.raises(ValueError, match=match):
        overlay(**args)


# --- visualize -------------------------------------------------------------------------------

def preprocessed(model, image_path, data_config=None):
    from deit.data import load_image

    predictor = Predictor(model, [str(i) for i in range(model.num_classes)], data_config or {})
    return predictor, predictor.transform(load_image(image_path, predictor.in_channels))[None]


def test_visualize_checkpoint_written_by_save_model(tmp_path):
    model = tiny()
    ckpt = save_model(model, tmp_path / "pico.safetensors")
    image = grey_image(tmp_path / "digit.png")  # 50 x 40: the centre 40 x 40 square is what the model sees
    report = visualize(ckpt, tmp_path / "digit.png", tmp_path / "out", per_layer=True)
    k = 6  # the smallest whole factor giving a shorter side >= 224 px: 300 x 240, sharp (nearest) pixels
    out = tmp_path / "out"
    assert report.rollout_cls == out / "digit-rollout-cls.png"
    assert report.rollout_dist == out / "digit-rollout-dist.png"
    assert report.similarity_plot == out / "digit-cls-dist-similarity.png"
    assert report.per_layer == out / "digit-attention-per-layer.png"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in report.paths)  # no temp files left
    for path in (report.rollout_cls, report.rollout_dist):
        with Image.open(path) as png:
            assert png.size == (50 * k, 40 * k) and png.mode == "RGB"
            # outside the centre crop: the image darkened, no heat map, each pixel a k x k block
            for x, y in ((2, 5), (47, 30)):
                for dx, dy in ((0, 0), (k - 1, k - 1)):
                    assert png.getpixel((x * k + dx, y * k + dy)) == (image.getpixel((x, y)) // 2,) * 3
    with Image.open(report.rollout_cls) as a, Image.open(report.rollout_dist) as b:
        assert a.tobytes() != b.tobytes()  # the two tokens' rollouts differ
    for path in (report.similarity_plot, report.per_layer):
        with Image.open(path) as png:
            png.load()
            assert png.format == "PNG" and png.width > 100
    # the same preprocessing and prediction as `deit predict`
    predictor, x = preprocessed(model, tmp_path / "digit.png")
    assert report.similarity == pytest.approx(token_similarity(model, x), abs=1e-6)
    assert len(report.similarity) == 7
    top = predictor.predict_files([tmp_path / "digit.png"], topk=1)[0]["top"][0]
    assert (report.predicted_index, report.predicted_class) == (top["index"], top["class"])
    assert report.probability == pytest.approx(top["probability"], abs=1e-6)
    assert "digit.png" in report.format()


def test_visualize_official_timm_layout(tmp_path):
    from deit.bench.harness import timm_equivalent

    ours = perturb_(create_model(DEIT)).eval()  # the registry's defaults: 1000 classes, RGB, 32 px
    peer = timm_equivalent(ours).eval()
    peer.load_state_dict(ours.state_dict(), strict=True)
    torch.save(peer.state_dict(), tmp_path / "timm_deit.pth")
    rgb = Image.merge("RGB", [grey_image(tmp_path / "c.png", (36, 36)), Image.new("L", (36, 36), 30),
                              Image.new("L", (36, 36), 200)])
    rgb.save(tmp_path / "colour.png")
    report = visualize(tmp_path / "timm_deit.pth", tmp_path / "colour.png", tmp_path / "out",
                       model_name=DEIT, head_fusion="max", discard_ratio=0.3)
    assert report.per_layer is None and len(report.paths) == 3
    for path in (report.rollout_cls, report.rollout_dist):
        with Image.open(path) as png:
            assert png.size == (36 * 7, 36 * 7)  # enlarged to a readable size
    _, x = preprocessed(ours, tmp_path / "colour.png")
    assert report.similarity == pytest.approx(token_similarity(ours, x), abs=1e-6)
    with torch.no_grad():
        assert report.predicted_index == int(peer(x).argmax())
    assert report.predicted_class == str(report.predicted_index)  # no class names in a timm file


def test_visualize_module_with_data_config_and_vit(tmp_path):
    grey_image(tmp_path / "img.png", (32, 32))
    model = tiny()
    config = {"mean": [0.2], "std": [0.3]}
    report = visualize(model, tmp_path / "img.png", tmp_path / "out", data_config=config,
                       classes=[f"c{i}" for i in range(10)])
    _, x = preprocessed(model, tmp_path / "img.png", config)
    _, x_default = preprocessed(model, tmp_path / "img.png")
    assert report.similarity == pytest.approx(token_similarity(model, x), abs=1e-6)
    assert report.similarity[1:] != pytest.approx(token_similarity(model, x_default), abs=1e-4)
    assert report.predicted_class == f"c{report.predicted_index}"
    assert not model.training  # mode untouched (eval before and after)

    vit = tiny(VIT).train()
    report = visualize(vit, tmp_path / "img.png", tmp_path / "vit")
    assert vit.training  # the caller's mode is restored
    assert report.rollout_dist is None and report.similarity_plot is None and report.similarity == []
    assert [p.name for p in report.paths] == ["img-rollout-cls.png"]
    assert sorted(p.name for p in (tmp_path / "vit").iterdir()) == ["img-rollout-cls.png"]
    with pytest.raises(ValueError, match="head_fusion"):
        visualize(vit, tmp_path / "img.png", tmp_path / "vit", head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        visualize(vit, tmp_path / "img.png", tmp_path / "vit", discard_ratio=1.0)


def test_rollout_in_visualize_matches_attention_rollout(tmp_path):
    """The written cls overlay is the overlay of attention_rollout on the model's own maps."""
    grey_image(tmp_path / "sq.png", (32, 32))
    model = tiny()
    report = visualize(model, tmp_path / "sq.png", tmp_path / "out", discard_ratio=0.2)
    _, x = preprocessed(model, tmp_path / "sq.png")
    flow = attention_rollout(attention_maps(model, x), 0, discard_ratio=0.2, num_prefix_tokens=2)
    enlarged = Image.open(tmp_path / "sq.png").resize((224, 224), Image.Resampling.NEAREST)  # 32 px x 7
    expected = overlay(enlarged, flow[0].reshape(8, 8), 0.5)
    with Image.open(report.rollout_cls) as png:
        assert png.tobytes() == expected.tobytes()
    assert math.isclose(float(flow.max()), 1.0)


def test_readable_enlarges_small_images_by_a_whole_factor():
    from deit.explain.attention import readable

    digit = Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy(), mode="L")
    big, k = readable(digit)
    assert k == 8 and big.size == (224, 224)
    assert big.getpixel((8 * 5 + 7, 8 * 3)) == digit.getpixel((5, 3))  # nearest: sharp k x k blocks
    photo = Image.new("RGB", (300, 250))
    assert readable(photo) == (photo, 1)


def test_overlay_covers_the_part_the_centre_crop_keeps(tmp_path):
    """crop_pct 0.5 on a 50 x 40 image for a 32 px model: resized to 80 x 64, centre 32 x 32
    kept, i.e. the box (15, 10)-(35, 30) of the original; outside it the image is darkened."""
    image = grey_image(tmp_path / "img.png")
    config = {"mean": [0.5], "std": [0.5], "crop_pct": 0.5}
    report = visualize(tiny(), tmp_path / "img.png", tmp_path / "out", data_config=config)
    k = 6
    with Image.open(report.rollout_cls) as png:
        assert png.size == (50 * k, 40 * k)
        for x, y in ((14, 20), (36, 20), (25, 9), (25, 30), (2, 2)):  # just outside the box
            assert png.getpixel((x * k, y * k)) == (image.getpixel((x, y)) // 2,) * 3
        inside = [png.getpixel((x * k, y * k)) for x in range(15, 35, 3) for y in range(10, 30, 3)]
        assert any(p[0] != p[2] for p in inside)  # coloured by the heat map
