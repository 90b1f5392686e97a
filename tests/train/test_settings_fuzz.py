"""Configuration fuzzing: property-based tests with hypothesis.

Each generated configuration is first judged by a reference written here from the
documented ranges (the ``ViT`` docstring; ``TrainConfig``'s field comments and ``deit train
--help``), independently of the library's own checks. A configuration the reference finds
valid must build and run (a forward and backward pass for a model; loading with every value
kept for a train config) without any exception; an invalid one must raise a ``ValueError``
whose message names an argument the reference found out of range. Any other outcome is a
bug: a constructor that rejects valid settings, accepts bad ones, or fails with a deep
traceback instead of a sentence naming the parameter.
"""
from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deit.models import DeiT, ViT
from deit.train.settings import TrainConfig, load_config

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
VALID = settings(FUZZ, max_examples=40)

_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(allow_nan=True), st.lists(st.integers(),
                                                                                                    max_size=2))


def _sometimes_junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``strategy``, sometimes a value of the wrong type."""
    return st.one_of(strategy, strategy, strategy, _junk)


def _small_int(low: int, high: int) -> st.SearchStrategy:
    return _sometimes_junk(st.integers(low, high))


def _rate() -> st.SearchStrategy:
    return _sometimes_junk(st.one_of(st.just(0.0), st.floats(-0.5, 1.5)))


# --- the reference: which arguments are out of their documented range ------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in(value: object, low: float, high: float, *, open_high: bool = False) -> bool:
    return _is_number(value) and low <= value and (value < high if open_high else value <= high)


def model_problems(config: dict, distilled: bool, logits: object) -> set[str]:
    """Names of the arguments outside the ranges of the ``ViT`` / ``DeiT`` docstrings."""
    bad = set()
    if not (_is_int(config["num_classes"]) and config["num_classes"] >= 0):
        bad.add("num_classes")
    for name in ("d_model", "image_size", "patch_size", "encoder_mlp_d", "encoder_num_heads", "num_encoder_blocks",
                 "in_channels"):
        if not (_is_int(config[name]) and config[name] > 0):
            bad.add(name)
    mlp = config.get("classifier_mlp_d")
    if mlp is not None and not (_is_int(mlp) and mlp > 0):
        bad.add("classifier_mlp_d")
    for whole, part in (("image_size", "patch_size"), ("d_model", "encoder_num_heads")):
        if not {whole, part} & bad and config[whole] % config[part]:
            bad |= {whole, part}
    for name in ("dropout", "encoder_dropout", "encoder_attention_dropout", "stochastic_depth_mp"):
        if not _in(config.get(name, 0.0), 0.0, 1.0, open_high=True):
            bad.add(name)
    if config.get("patchify_technique", "convolutional") not in ("linear", "convolutional"):
        bad.add("patchify_technique")
    depth = config.get("stochastic_depth", False)
    if not isinstance(depth, bool):
        bad.add("stochastic_depth")
    elif not depth and "stochastic_depth_mp" not in bad and config.get("stochastic_depth_mp", 0.0) > 0:
        bad.add("stochastic_depth_mp")  # a drop rate without stochastic depth has no effect
    scale = config.get("layer_scale")
    if scale is not None and not (_is_number(scale) and scale > 0):
        bad.add("layer_scale")
    if distilled and logits not in ("classification", "distillation", "fusion"):
        bad.add("return_logits_type")
    return bad


MODEL_KWARGS = st.fixed_dictionaries({}, optional={
    "num_classes": _small_int(-2, 12),
    "d_model": _small_int(-1, 48),
    "image_size": _small_int(-1, 24),
    "patch_size": _small_int(-1, 10),
    "classifier_mlp_d": st.one_of(st.none(), _small_int(-1, 16)),
    "encoder_mlp_d": _small_int(-1, 48),
    "encoder_num_heads": _small_int(-1, 6),
    "num_encoder_blocks": _small_int(-1, 3),
    "dropout": _rate(),
    "encoder_dropout": _rate(),
    "encoder_attention_dropout": _rate(),
    "patchify_technique": _sometimes_junk(st.sampled_from(["linear", "convolutional", "pixel"])),
    "stochastic_depth": _sometimes_junk(st.booleans()),
    "stochastic_depth_mp": _rate(),
    "layer_scale": st.one_of(st.none(), _sometimes_junk(st.floats(-1.0, 1.0))),
    "in_channels": _small_int(-1, 4),
})
LOGITS = _sometimes_junk(st.sampled_from(["classification", "distillation", "fusion", "both"]))


@st.composite
def valid_model_kwargs(draw) -> dict:
    """Configurations inside every documented range, so that building and running them is
    exercised as often as rejecting bad ones."""
    heads = draw(st.integers(1, 4))
    patch = draw(st.integers(1, 5))
    return {
        "num_classes": draw(st.integers(0, 12)),
        "d_model": heads * draw(st.integers(1, 8)),
        "encoder_num_heads": heads,
        "patch_size": patch,
        "image_size": patch * draw(st.integers(1, 4)),
        "encoder_mlp_d": draw(st.integers(1, 32)),
        "classifier_mlp_d": draw(st.one_of(st.none(), st.integers(1, 16))),
        "num_encoder_blocks": draw(st.integers(1, 3)),
        "dropout": draw(st.floats(0.0, 0.9)),
        "encoder_dropout": draw(st.floats(0.0, 0.9)),
        "encoder_attention_dropout": draw(st.floats(0.0, 0.9)),
        "patchify_technique": draw(st.sampled_from(["linear", "convolutional"])),
        "stochastic_depth": (depth := draw(st.booleans())),
        "stochastic_depth_mp": draw(st.floats(0.0, 0.9)) if depth else 0.0,
        "layer_scale": draw(st.one_of(st.none(), st.floats(1e-6, 1.0))),
        "in_channels": draw(st.integers(1, 4)),
    }


# small defaults so that valid draws run in milliseconds; the draw overrides them
SMALL = dict(num_classes=5, d_model=16, image_size=8, patch_size=4, encoder_mlp_d=32, encoder_num_heads=2,
             num_encoder_blocks=1, in_channels=3)


def _build(config: dict, distilled: bool, logits: object) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeiT warns that classifier_mlp_d is ignored
        return DeiT(return_logits_type=logits, **config) if distilled else ViT(**config)


def _forward_backward(model: torch.nn.Module, config: dict, distilled: bool) -> None:
    """A training step's forward and backward: every head has the drawn shape and the input
    gets a finite gradient."""
    size, channels, classes = config["image_size"], config["in_channels"], config["num_classes"]
    x = torch.randn(2, channels, size, size, requires_grad=True)  # (B, C, H, W)
    model.train()
    out = model(x)
    student = out[0] if distilled else out  # a distilled model returns (heads, teacher output)
    parts = student if isinstance(student, tuple) else (student,)
    assert len(parts) == (2 if distilled else 1)
    # 0 classes: the pooled features, after the ViT's tanh pre-logits layer when it has one (timm's
    # representation layer; a DeiT ignores classifier_mlp_d: linear heads)
    features = config.get("classifier_mlp_d") if not distilled else None
    width = classes if classes else (features or config["d_model"])
    assert all(part.shape == (2, width) for part in parts), [part.shape for part in parts]
    sum(part.float().sum() for part in parts).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@VALID
@given(kwargs=valid_model_kwargs(), distilled=st.booleans(),
       logits=st.sampled_from(["classification", "distillation", "fusion"]))
def test_valid_model_configurations_build_and_run(kwargs, distilled, logits):
    config = {**SMALL, **kwargs}
    assert not model_problems(config, distilled, logits)  # the strategy stays inside the documented ranges
    _forward_backward(_build(config, distilled, logits), config, distilled)


@FUZZ
@given(kwargs=MODEL_KWARGS, distilled=st.booleans(), logits=LOGITS)
def test_model_constructor_builds_valid_and_names_invalid_arguments(kwargs, distilled, logits):
    config = {**SMALL, **kwargs}
    bad = model_problems(config, distilled, logits)
    if not bad:
        _forward_backward(_build(config, distilled, logits), config, distilled)
        return
    with pytest.raises(ValueError) as raised:
        _build(config, distilled, logits)
    message = str(raised.value)
    assert any(re.search(rf"\b{name}=", message) for name in bad), (sorted(bad), message)


def test_the_model_fuzzer_draws_both_outcomes():
    """The mixed strategy is not all valid or all invalid (the property above would then
    test one side only)."""
    seen = set()

    @settings(FUZZ, database=None)
    @given(kwargs=MODEL_KWARGS, distilled=st.booleans(), logits=LOGITS)
    def collect(kwargs, distilled, logits):
        seen.add(bool(model_problems({**SMALL, **kwargs}, distilled, logits)))

    collect()
    assert seen == {True, False}


# --- the train config ------------------------------------------------------------------------

_DEFAULTS = TrainConfig()


def train_problems(fields: dict) -> set[str]:
    """Names of the fields outside the ranges of ``deit train --help`` (with the defaults
    for the fields not drawn)."""
    def get(name: str) -> object:
        return fields.get(name, getattr(_DEFAULTS, name))

    bad = set()
    for name in ("epochs", "batch_size", "accum_steps", "repeated_aug"):
        if not (_is_int(get(name)) and get(name) > 0):
            bad.add(name)
    if not (_is_int(get("num_workers")) and get("num_workers") >= 0):
        bad.add("num_workers")
    if not _in(get("warmup_epochs"), 0, float("inf"), open_high=True):
        bad.add("warmup_epochs")
    if not (_in(get("lr"), 0.0, 10.0) and get("lr") > 0):
        bad.add("lr")
    for name, low, high in (("min_lr", 0, 10), ("weight_decay", 0, 10), ("mixup", 0, 100), ("cutmix", 0, 100),
                            ("mixup_prob", 0, 1), ("smoothing", 0, 1), ("reprob", 0, 1), ("drop_path", 0, 1),
                            ("model_ema_decay", 0, 1)):
        if not _in(get(name), low, high):
            bad.add(name)
    for name, low, high in (("clip_grad", 1e-12, 1e12), ("distillation_alpha", 0, 1), ("distillation_tau", 1e-6, 1e6)):
        if get(name) is not None and not _in(get(name), low, high):
            bad.add(name)
    scale = get("scale")
    if not (isinstance(scale, (tuple, list)) and len(scale) == 2 and all(_is_number(s) for s in scale)
            and 0 < scale[0] <= scale[1] <= 1):
        bad.add("scale")
    for name, allowed in (("distillation_type", ("none", "soft", "hard")), ("kl_reduction", ("batchmean", "official")),
                          ("bad_images", ("fail", "skip"))):
        if not isinstance(get(name), str) or get(name) not in allowed:
            bad.add(name)
    if "distillation_type" not in bad and get("distillation_type") != "none" and not get("teacher_model"):
        bad.add("distillation_type")  # distillation needs a teacher (paper §4)
    device = get("device")
    if not (isinstance(device, str) and (device in ("auto", "cpu") or device.startswith("cuda"))):
        bad.add("device")
    if not (isinstance(get("model"), str) and get("model")):
        bad.add("model")
    return bad


TRAIN_FIELDS = st.fixed_dictionaries({}, optional={
    "epochs": _small_int(-1, 5),
    "warmup_epochs": _small_int(-1, 5),
    "batch_size": _small_int(-1, 64),
    "accum_steps": _small_int(-1, 4),
    "lr": _sometimes_junk(st.floats(-1.0, 1.0)),
    "min_lr": _sometimes_junk(st.floats(-1.0, 1.0)),
    "weight_decay": _sometimes_junk(st.floats(-1.0, 1.0)),
    "clip_grad": st.one_of(st.none(), _sometimes_junk(st.floats(-1.0, 5.0))),
    "mixup": _sometimes_junk(st.floats(-1.0, 2.0)),
    "cutmix": _sometimes_junk(st.floats(-1.0, 2.0)),
    "mixup_prob": _rate(),
    "smoothing": _rate(),
    "reprob": _rate(),
    "drop_path": _rate(),
    "scale": _sometimes_junk(st.tuples(st.floats(-0.5, 1.5), st.floats(-0.5, 1.5))),
    "distillation_type": _sometimes_junk(st.sampled_from(["none", "soft", "hard", "medium"])),
    "teacher_model": st.one_of(st.none(), st.just("convnext_atto_32")),
    "distillation_alpha": st.one_of(st.none(), _rate()),
    "distillation_tau": st.one_of(st.none(), _sometimes_junk(st.floats(-1.0, 10.0))),
    "kl_reduction": _sometimes_junk(st.sampled_from(["batchmean", "official", "sum"])),
    "device": _sometimes_junk(st.sampled_from(["auto", "cpu", "cuda:0", "tpu"])),
    "model": _sometimes_junk(st.sampled_from(["deit_pico_patch4_32", ""])),
    "repeated_aug": _small_int(-1, 4),
    "model_ema_decay": _rate(),
    "bad_images": _sometimes_junk(st.sampled_from(["fail", "skip", "ignore"])),
    "num_workers": _small_int(-1, 2),
})


@st.composite
def valid_train_fields(draw) -> dict:
    epochs = draw(st.integers(1, 10))
    kind = draw(st.sampled_from(["none", "soft", "hard"]))
    mixup, cutmix = draw(st.floats(0.0, 2.0)), draw(st.sampled_from([0.0, 1.0]))
    batch = draw(st.integers(1, 512))
    if mixup > 0 or cutmix > 0:  # Mixup/CutMix pair an image with the batch's reverse: an even batch
        batch += batch % 2
    return {
        "epochs": epochs, "warmup_epochs": draw(st.integers(0, epochs - 1)), "batch_size": batch,
        "lr": draw(st.floats(1e-6, 1.0)), "mixup": mixup, "cutmix": cutmix, "smoothing": draw(st.floats(0.0, 1.0)),
        "scale": tuple(sorted(draw(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0))))),
        "distillation_type": kind, "teacher_model": None if kind == "none" else "convnext_atto_32",
        "bad_images": draw(st.sampled_from(["fail", "skip"])), "device": draw(st.sampled_from(["auto", "cpu"])),
    }


def _assert_loads_as_given(fields: dict) -> None:
    config = load_config(None, fields)
    assert isinstance(config, TrainConfig)
    for name, value in fields.items():
        got = getattr(config, name)
        same = got == value or (isinstance(value, (tuple, list)) and tuple(got) == tuple(value))
        assert same or (isinstance(value, float) and math.isnan(value)), (name, value, got)


@VALID
@given(fields=valid_train_fields())
def test_valid_train_configs_load(fields):
    assert not train_problems(fields)
    _assert_loads_as_given(fields)


@FUZZ
@given(fields=TRAIN_FIELDS)
def test_train_config_loads_valid_and_names_invalid_fields(fields):
    """The train config (as from YAML or flags) loads with every value kept, or raises a
    ValueError naming a field that is out of range, with its flag."""
    bad = train_problems(fields)
    if not bad:
        _assert_loads_as_given(fields)
        return
    with pytest.raises(ValueError) as raised:
        load_config(None, fields)
    message = str(raised.value)
    named = [name for name in bad if re.search(rf"\b{name}(=| may not be empty)", message)]
    assert named, (sorted(bad), message)
    assert f"--{named[0].replace('_', '-')}" in message, message  # and the flag that sets it


@pytest.mark.parametrize("bad", [{"epochs": 2.5}, {"lr": "fast"}, {"scale": [0.5]}, {"batch_size": True}])
def test_examples_the_fuzzer_must_keep_rejecting(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        load_config(None, bad)
