"""A distillation teacher's logits, whatever the teacher is (Touvron et al. 2021, §4).

Three consumers need the teacher's logits for a batch — the student's forward
(:meth:`deit.models.deit.DeiT.teacher_forward`), the loss of a single-head student
(:class:`deit.distill.losses.DistillationLoss`) and the teacher agreement of
:func:`deit.train.engine.evaluate` — and all of them call :func:`teacher_logits`:

* the teacher always runs in eval mode under ``torch.inference_mode`` (it is frozen; the
  paper's teacher is a fixed, pre-trained network), and the result is cloned out of
  inference mode so that it can serve as a loss target;
* a DeiT teacher is run through ``student_model``: its eval output is what its
  ``return_logits_type`` selects (the fusion of both heads by default, as the official
  evaluation), and a DeiT that holds a teacher of its own does not run that one;
* any other module's output is accepted as a tensor, as a tuple or list whose first
  element is the logits (a model's own output comes first, as in DeiT's
  ``(student, teacher)``), or as an object with ``.logits`` (HF transformers'
  ``ImageClassifierOutput``).

:class:`TeacherInputNorm` feeds a teacher trained with other input statistics than the
student's data: the student's normalised batch is taken back to pixel values and
normalised with the teacher's mean/std, ``x_t = (x·σ_s + μ_s − μ_t) / σ_t`` per channel, as
``DistillationTeacher.normalize_input`` in timm's ``timm/task/distillation.py``.

:class:`TeacherRef` is how a module keeps its teacher without owning it: a teacher that is
a registered submodule lands in ``state_dict()``, ``parameters()`` and the optimizer (the
one flaw of lucidrains' ``vit_pytorch/distill.py``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from deit.core.errors import ConfigError

# ITU-R BT.601 luma, the weights of Pillow's RGB -> "L" conversion, used when grey image
# files are decoded for a 1-channel model (deit.data.load_image)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class TeacherRef:
    """A reference to a frozen module that ``nn.Module.__setattr__`` does not register.

    The module held here is not a child of its owner, so it stays out of the owner's
    ``state_dict()``, ``parameters()``, ``named_modules()`` and optimizers; deep copies of
    the owner (EMA, weight averaging) share it instead of cloning it.
    """

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> "TeacherRef":
        return self

    def __repr__(self) -> str:
        return f"TeacherRef({type(self.value).__name__})"


def _eval_output(teacher: nn.Module, x: torch.Tensor) -> Any:
    """The module's prediction for ``x``; a DeiT through ``student_model`` (see module doc)."""
    student_model = getattr(teacher, "student_model", None)
    out = student_model(x) if callable(student_model) else teacher(x)
    logits = getattr(out, "logits", None)  # HF transformers ModelOutput
    if isinstance(logits, torch.Tensor):
        return logits
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out


def teacher_logits(teacher: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """The frozen ``teacher``'s logits (B, K) for the batch ``x`` (B, C, H, W).

    Eval mode, ``torch.inference_mode``; the result is an ordinary tensor without gradient
    (cloned when computed outside inference mode). ``num_classes`` checks K.

    Raises:
        ValueError: the teacher's output is not a (batch, num_classes) tensor.
    """
    if teacher.training:  # the teacher is frozen whatever a caller did to it
        teacher.eval()
    with torch.inference_mode():
        out = _eval_output(teacher, x)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the teacher {type(teacher).__name__} returned a {type(out).__name__}; expected logits "
                          "of shape (batch, num_classes), a tuple whose first element is those logits, or an "
                          "object with .logits")
    batch = x.shape[0]
    want = num_classes if num_classes is not None else (out.shape[-1] if out.ndim else None)
    if out.ndim != 2 or out.shape[0] != batch or out.shape[1] != want:
        raise ConfigError(f"the teacher returned logits of shape {tuple(out.shape)}; expected (batch, {want}) with "
                          f"batch={batch}: one row per image and the student's number of classes. Use a teacher "
                          "trained on the same classes (--teacher-model / --teacher-checkpoint)")
    return out if torch.is_inference_mode_enabled() else out.clone()  # (B, K)


def _floats(values: Sequence[float], what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{what}={list(values)} is invalid; expected one finite number per channel")
    return values


def same_statistics(mean_a: Sequence[float], std_a: Sequence[float], mean_b: Sequence[float],
                    std_b: Sequence[float], tol: float = 1e-6) -> bool:
    """Whether two (mean, std) pairs describe the same per-channel normalisation."""
    if not len(mean_a) == len(std_a) == len(mean_b) == len(std_b):
        return False
    return all(math.isclose(a, b, rel_tol=tol, abs_tol=tol)
               for a, b in zip((*mean_a, *std_a), (*mean_b, *std_b)))


class TeacherInputNorm(nn.Module):
    """A teacher fed with inputs normalised for the student.

    The student's batch ``x`` (B, C_s, H, W) was normalised with ``student_mean`` /
    ``student_std``; the wrapped ``teacher`` expects C_t channels normalised with
    ``teacher_mean`` / ``teacher_std``. Per channel, ``x_t = (x·σ_s + μ_s − μ_t) / σ_t``
    (timm ``timm/task/distillation.py`` ``DistillationTeacher.normalize_input``). Channels
    are converted in pixel space: a grey student's channel is replicated for an RGB
    teacher (as grey files are decoded to RGB), an RGB student's channels are reduced to
    BT.601 luma for a grey teacher (as Pillow's ``convert("L")``).

    ``input_size``: the side the teacher was trained at, when it differs from the student's
    (a teacher trained on 32 px images, a student on the same images at 28 px): each batch is
    resized to it (bicubic, antialiased, as the data pipeline resizes images), after the
    conversion, which commutes with it.

    The wrapper owns the teacher (it is the unit the student holds through a
    :class:`TeacherRef`, never a submodule of the student) and returns its logits.
    :meth:`as_is` declares a teacher that takes the student's batches unchanged.
    """

    def __init__(self, teacher: nn.Module, *, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Sequence[float], teacher_std: Sequence[float], input_size: int | None = None) -> None:
        super().__init__()
        student_mean, student_std = _floats(student_mean, "student mean"), _floats(student_std, "student std")
        teacher_mean, teacher_std = _floats(teacher_mean, "teacher mean"), _floats(teacher_std, "teacher std")
        if len(student_mean) != len(student_std) or len(teacher_mean) != len(teacher_std):
            raise ConfigError(f"mean and std need one value per channel each; got student mean {list(student_mean)} "
                              f"/ std {list(student_std)}, teacher mean {list(teacher_mean)} / std {list(teacher_std)}")
        if min(student_std + teacher_std) <= 0:
            raise ConfigError(f"normalisation std must be > 0; got student std {list(student_std)}, teacher std "
                              f"{list(teacher_std)} (--teacher-std)")
        c_s, c_t = len(student_mean), len(teacher_mean)
        if not (c_s == c_t or c_s == 1 or (c_s == 3 and c_t == 1)):
            raise ConfigError(f"cannot feed {c_s}-channel student inputs to a {c_t}-channel teacher; supported: equal "
                              "channels, grey -> RGB and RGB -> grey. Set --teacher-mean/--teacher-std with one value "
                              f"per teacher channel, or train the teacher with {c_s} channels")
        if input_size is not None and not (isinstance(input_size, int) and input_size > 0):
            raise ConfigError(f"input_size={input_size!r} is invalid; expected the teacher's image side in pixels")
        self.teacher = teacher
        self.teacher_name = getattr(teacher, "teacher_name", type(teacher).__name__)
        self.student_channels, self.teacher_channels = c_s, c_t
        self.input_size = input_size

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)

        self.register_buffer("student_mean", column(student_mean), persistent=False)
        self.register_buffer("student_std", column(student_std), persistent=False)
        self.register_buffer("teacher_mean", column(teacher_mean), persistent=False)
        self.register_buffer("teacher_std", column(teacher_std), persistent=False)
        self.register_buffer("luma", column(LUMA_WEIGHTS), persistent=False)

    def renormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Student-normalised (B, C_s, H, W) -> teacher-normalised (B, C_t, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.student_channels:
            raise ConfigError(f"teacher inputs of shape {tuple(x.shape)}; expected (batch, {self.student_channels}, "
                              "height, width) as normalised for the student")
        pixels = x * self.student_std + self.student_mean  # (B, C_s, H, W), [0, 1] units
        if self.student_channels != self.teacher_channels:
            if self.student_channels == 1:
                pixels = pixels.expand(-1, self.teacher_channels, -1, -1)  # (B, C_t, H, W)
            else:
                pixels = (pixels * self.luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        x_t = (pixels - self.teacher_mean) / self.teacher_std  # (B, C_t, H, W)
        if self.input_size is not None and tuple(x_t.shape[-2:]) != (self.input_size, self.input_size):
            x_t = nn.functional.interpolate(x_t, size=(self.input_size, self.input_size), mode="bicubic",
                                            align_corners=False, antialias=True)  # (B, C_t, S, S)
        return x_t

    @classmethod
    def as_is(cls, teacher: nn.Module, channels: int, *, input_size: int | None = None) -> TeacherInputNorm:
        """``teacher`` fed the student's ``channels``-channel batches as they are (resized to
        ``input_size`` when given): a declaration that it was trained with the student's
        normalisation."""
        identity = dict(student_mean=(0.0,) * channels, student_std=(1.0,) * channels,
                        teacher_mean=(0.0,) * channels, teacher_std=(1.0,) * channels)
        return cls(teacher, input_size=input_size, **identity)

    def forward(self, x: torch.Tensor) -> Any:
        return _eval_output(self.teacher, self.renormalise(x))

    def extra_repr(self) -> str:
        fmt = format_statistics
        size = f", resized to {self.input_size} px" if self.input_size is not None else ""
        return (f"student mean {fmt(self.student_mean)} std {fmt(self.student_std)} -> teacher mean "
                f"{fmt(self.teacher_mean)} std {fmt(self.teacher_std)}{size}")


def format_statistics(values: Sequence[float] | torch.Tensor) -> str:
    """Per-channel statistics for messages: ``[0.485, 0.456, 0.406]``."""
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
