"""Configuration fuzzing (issue 5, item 5): property-based tests with hypothesis.

Every generated configuration — valid, out of range, of the wrong type — either builds and
runs (a forward and backward pass for a model; validation for a train config) or raises a
``ValueError`` with a message. Any other exception type is a bug: a user would meet it as a
deep traceback instead of a sentence naming the parameter.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deit.config import TrainConfig, load_config
from deit.models import DeiT, ViT

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(allow_nan=True), st.lists(st.integers(),
                                                                                                    max_size=2))


def _sometimes_junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``strategy``, sometimes a value of the wrong type."""
    return st.one_of(strategy, strategy, strategy, _junk)


def _small_int(low: int, high: int) -> st.SearchStrategy:
    return _sometimes_junk(st.integers(low, high))


def _rate() -> st.SearchStrategy:
    return _sometimes_junk(st.one_of(st.just(0.0), st.floats(-0.5, 1.5)))


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


def _forward_backward(model: torch.nn.Module, distilled: bool) -> None:
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size, requires_grad=True)
    model.train()
    out = model(x)
    student = out[0] if distilled else out
    parts = student if isinstance(student, tuple) else (student,)
    loss = sum(part.float().sum() for part in parts)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(part.shape == (2, model.num_classes) if model.num_classes else part.shape[0] == 2 for part in parts)


@FUZZ
@given(kwargs=st.one_of(MODEL_KWARGS, valid_model_kwargs()), distilled=st.booleans(),
       logits=_sometimes_junk(st.sampled_from(["classification", "distillation", "fusion", "both"])))
def test_model_constructor_builds_and_runs_or_raises_value_error(kwargs, distilled, logits):
    config = {**SMALL, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeiT warns that classifier_mlp_d is ignored
        try:
            model = DeiT(return_logits_type=logits, **config) if distilled else ViT(**config)
        except ValueError as err:
            assert str(err), "a ValueError without a message"
            return
    _forward_backward(model, distilled)


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
    return {
        "epochs": epochs, "warmup_epochs": draw(st.integers(0, epochs - 1)), "batch_size": draw(st.integers(1, 512)),
        "lr": draw(st.floats(1e-6, 1.0)), "mixup": draw(st.floats(0.0, 2.0)), "smoothing": draw(st.floats(0.0, 1.0)),
        "scale": tuple(sorted(draw(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0))))),
        "distillation_type": kind, "teacher_model": None if kind == "none" else "convnext_atto_32",
        "bad_images": draw(st.sampled_from(["fail", "skip"])), "device": draw(st.sampled_from(["auto", "cpu"])),
    }


@FUZZ
@given(fields=st.one_of(TRAIN_FIELDS, valid_train_fields()))
def test_train_config_validates_or_raises_value_error(fields):
    """The train config (as from YAML or flags) is either valid or a ValueError naming the field."""
    try:
        config = load_config(None, fields)
    except ValueError as err:
        message = str(err)
        assert message
        assert any(name in message for name in fields) or "unknown" in message, message
        return
    assert isinstance(config, TrainConfig)
    for name, value in fields.items():
        got = getattr(config, name)
        assert got == value or (isinstance(value, tuple) and tuple(got) == value) or value != value, name


@pytest.mark.parametrize("bad", [{"epochs": 2.5}, {"lr": "fast"}, {"scale": [0.5]}, {"batch_size": True}])
def test_examples_the_fuzzer_must_keep_rejecting(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        load_config(None, bad)
