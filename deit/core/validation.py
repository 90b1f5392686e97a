"""Configuration checks shared by the model constructors and the CLI.

Every configuration error is a :class:`ValueError` whose message names the offending
parameter, the value received and what was expected.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterable, Iterator

from deit.core.errors import ConfigError

_in_engine_loop: contextvars.ContextVar[bool] = contextvars.ContextVar("deit_in_engine_loop", default=False)


@contextlib.contextmanager
def engine_loop() -> Iterator[None]:
    """Marks the forward passes of the engine's training and evaluation loops (student and
    teacher): on CUDA the models skip their NaN/Inf input scan there, because it would
    synchronise the device on every batch; batches come from the data pipeline, and
    training stops on a non-finite loss before any update anyway."""
    token = _in_engine_loop.set(True)
    try:
        yield
    finally:
        _in_engine_loop.reset(token)


def check_choice(name: str, value: object, allowed: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name}={value!r} is not supported; expected one of: {choices}")


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int > 0 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is invalid; expected a positive integer")


def check_non_negative_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 0 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} is invalid; expected an integer >= 0")


def check_probability(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        raise ConfigError(f"{name}={value!r} is invalid; expected a probability in [0, 1)")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise ``ValueError`` unless ``divisor`` divides ``value``."""
    if value % divisor != 0:
        raise ConfigError(
            f"{name}={value} must be divisible by {divisor_name}={divisor} "
            f"(remainder {value % divisor})"
        )


def check_image_values(x) -> None:
    """Raise ``ValueError`` for an empty batch, a non-float dtype or NaN/Inf pixels.

    Skipped while tracing, exporting or compiling (symbolic tensors: the check is for data,
    not graphs) and on meta tensors. On CUDA the NaN/Inf scan is skipped when gradients are
    on or inside :func:`engine_loop` (the engine's loops, also their no-grad forwards): it
    would synchronise the device on every batch.
    """
    import torch

    if (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
            or x.device.type == "meta"):
        return
    if x.shape[0] == 0:
        raise ConfigError(f"got an empty batch (input of shape {tuple(x.shape)}); expected at least one image")
    if not x.is_floating_point():
        raise ConfigError(f"expected a floating-point image tensor, got dtype {x.dtype}; convert with "
                          "x.float() and normalise as the model's data config says")
    if x.device.type != "cuda" or not (torch.is_grad_enabled() or _in_engine_loop.get()):
        _check_finite(x)


def _check_finite(x) -> None:
    import torch

    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ConfigError(f"the input holds {bad} NaN or Inf value(s) in a batch of shape {tuple(x.shape)}; "
                          "expected finite pixel values (check the data pipeline and normalisation)")


def per_channel(values, channels: int, *, name: str, mismatch: str = "error", positive: bool = False,
                error: type[Exception] = ConfigError, message: str | None = None) -> tuple[float, ...]:
    """Normalisation statistics for ``channels`` input channels, from one value or one per channel.

    One value (a number or a 1-entry sequence) is replicated: grey statistics for an RGB input.
    ``channels`` values are kept. Any other count is an ``error`` naming ``name`` (``message``
    replaces the default text), or with ``mismatch="average"`` their mean replicated — RGB
    statistics for a grey input, what a model trained on one kind of image is fed when given
    the other (timm's ``resolve_data_config`` does the same). ``positive`` requires every
    value > 0 (a standard deviation)."""
    if mismatch not in ("error", "average"):
        raise ValueError(f"mismatch={mismatch!r}; expected 'error' or 'average'")
    values = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
    if len(values) == 1:
        values = values * channels
    elif len(values) != channels:
        if mismatch == "error":
            raise error(message or f"{name} has {len(values)} entries {values}; expected {channels} (one per input "
                                   f"channel, or a single value for all)")
        values = (sum(values) / len(values),) * channels
    if positive and min(values) <= 0:
        raise error(f"{name}={values} is invalid; expected every entry > 0")
    return values
