"""DeiT: the vision transformer with a distillation token (Touvron et al. 2021, §4).

Behaviour follows the paper and the official checkpoints; the seed API
(``shared/seed/deit-api.txt``) fixes only the names of the constructor arguments and methods:

* the distillation token sits right after the class token (sequence index 1) and has
  its own row of the position embedding, which therefore has N+2 rows;
* both tokens are truncated-normal initialised (std 0.02);
* the final LayerNorm is applied before both linear heads ``head`` and ``head_dist``;
* in training mode the student returns ``(cls_logits, dist_logits)`` so that the loss can
  supervise the class head with the labels and the distillation head with the teacher
  (paper §4, "distillation token"); in eval mode it returns the tensor selected by
  ``return_logits_type`` — ``"fusion"`` is the mean of the two heads' logits, as the
  official code (the paper's late fusion adds the softmax outputs; the argmax rarely
  differs and the official weights were evaluated with the logit mean);
* the teacher is NOT a submodule: it never appears in ``state_dict()``, ``parameters()``
  or an optimizer, always stays in eval mode with ``requires_grad=False`` and runs under
  ``torch.inference_mode()`` — yet it moves with ``.to()`` / ``.cuda()`` / ``.half()``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_choice
from deit.models.outputs import RETURN_LOGITS_TYPES, Heads, StudentTeacher
from deit.models.teacher_output import TeacherInputNorm, TeacherRef, teacher_logits
from deit.models.vit import ViT


class DeiT(ViT):
    """Data-efficient image Transformer with a distillation token.

    Takes every :class:`~deit.models.vit.ViT` argument plus:

    Args:
        return_logits_type: what :meth:`student_model` returns in eval mode:
            ``"classification"`` (class-token head), ``"distillation"`` (distillation-token
            head) or ``"fusion"`` (mean of both heads' logits).
        teacher_model_name: the teacher used by :meth:`forward`: a registered model name
            (``deit.list_models()``), ``"ConvNeXt"`` (default ConvNeXt variant, see
            :func:`deit.distill.teachers.resolve_teacher_name`), ``"timm:<name>"``, an
            ``nn.Module`` to use as it is, or ``None`` for a student-only model.
        teacher_inputs: with an ``nn.Module`` as ``teacher_model_name``: ``"student"`` declares
            that it takes the student's batches as they are (see :meth:`set_teacher`).
        teacher_checkpoint: explicit path of the teacher's weights.
        checkpoint_dir: directory searched for ``<teacher name>.safetensors`` / ``.pth``
            when no explicit path is given; defaults to ``$DEIT_CHECKPOINT_DIR``.

    ``classifier_mlp_d`` is accepted for compatibility with the seed API but DeiT's two
    heads are linear, as in the paper and the official checkpoints; a non-``None`` value
    is ignored with a warning.
    """

    num_prefix_tokens = 2
    # teacher and its name (an nn.Module may be given as the name): held, never registered
    _teacher_ref = TeacherRef(None)
    _teacher_name_ref = TeacherRef(None)

    def __init__(
        self,
        *,
        return_logits_type: str = "fusion",
        teacher_model_name: str | nn.Module | None = None,
        teacher_inputs: str | None = None,
        teacher_checkpoint: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        **vit_kwargs: Any,
    ) -> None:
        check_choice("return_logits_type", return_logits_type, RETURN_LOGITS_TYPES)
        if vit_kwargs.get("classifier_mlp_d") is not None:
            warnings.warn(
                f"classifier_mlp_d={vit_kwargs['classifier_mlp_d']} is ignored: DeiT's class and "
                "distillation heads are linear (paper §4, official checkpoints)", stacklevel=2)
        super().__init__(**vit_kwargs)
        self._return_logits_type = return_logits_type
        # through the holder even for an nn.Module: nn.Module.__setattr__ would register it as a
        # submodule, putting the teacher into the student's state_dict(), parameters() and optimizer
        self._teacher_name_ref = TeacherRef(teacher_model_name)
        self.teacher_checkpoint = teacher_checkpoint
        self.checkpoint_dir = checkpoint_dir
        self.config.update(return_logits_type=return_logits_type)
        if isinstance(teacher_model_name, nn.Module):
            self.set_teacher(teacher_model_name, inputs=teacher_inputs)
        elif teacher_model_name is not None:
            if not isinstance(teacher_model_name, str):
                raise ConfigError(f"teacher_model_name={teacher_model_name!r} is invalid; expected a model "
                                  "name, an nn.Module or None")
            self.loadTeacherModel()

    # --- construction hooks -----------------------------------------------------------
    def _init_extra_tokens(self, d_model: int) -> None:
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d_model))

    def _build_heads(self, num_classes: int, classifier_mlp_d: int | None) -> None:
        self.pre_logits = nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def prefix_token_parameters(self) -> list[nn.Parameter]:
        return [self.cls_token, self.dist_token]  # class token at index 0, distillation token at 1

    # --- return type ------------------------------------------------------------------
    @property
    def return_logits_type(self) -> str:
        return self._return_logits_type

    @return_logits_type.setter
    def return_logits_type(self, value: str) -> None:
        check_choice("return_logits_type", value, RETURN_LOGITS_TYPES)
        self._return_logits_type = value
        self.config["return_logits_type"] = value

    # --- timm-style interface ---------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    def _classifier_names(self) -> tuple[str, ...]:
        return ("head", "head_dist")

    def _head_in_features(self) -> int:
        return self.embed_dim  # linear heads (classifier_mlp_d is ignored)

    def forward_heads(self, x: torch.Tensor) -> Heads:
        """Tokens (B, N+2, D) -> :class:`~deit.models.outputs.Heads` ``(cls, dist)`` whatever the
        mode (each head and their fusion in one pass)."""
        cls_logits = self.head(self.head_drop(x[:, 0]))  # (B, K)
        dist_logits = self.head_dist(self.head_drop(x[:, 1]))  # (B, K)
        return Heads(cls_logits, dist_logits)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens (B, N+2, D) -> logits.

        Training mode: :class:`~deit.models.outputs.Heads` ``(cls, dist)``, each (B, num_classes).
        Eval mode: the (B, num_classes) tensor chosen by ``return_logits_type``.
        ``pre_logits=True``: mean of the two normalised tokens (B, D), as timm.
        """
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2  # (B, D)
        heads = self.forward_heads(x)
        return heads if self.training else heads.select(self._return_logits_type)

    # --- seed API ---------------------------------------------------------------------
    def student_model(self, x: torch.Tensor):
        """Student forward pass; see :meth:`forward_head` for what it returns."""
        return self.forward_head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> StudentTeacher:
        """Returns :class:`~deit.models.outputs.StudentTeacher` ``(student, teacher)``;
        ``teacher`` is ``None`` without a teacher and otherwise carries no gradient."""
        student = self.student_model(x)
        teacher = self.teacher_forward(x) if self.teacher is not None else None
        return StudentTeacher(student, teacher)

    # --- teacher ----------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher, or ``None``. Not a submodule (see module docstring)."""
        return self._teacher_ref.value

    @property
    def teacher_model_name(self) -> str | nn.Module | None:
        """The teacher's name as given to the constructor (or the module given in its place)."""
        return self._teacher_name_ref.value

    @teacher_model_name.setter
    def teacher_model_name(self, value: str | nn.Module | None) -> None:
        self._teacher_name_ref = TeacherRef(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "teacher_model_name":  # the property, even for a module (never a submodule)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def set_teacher(self, teacher: nn.Module | None, *, inputs: str | None = None) -> None:
        """Use ``teacher`` as the (frozen) teacher; ``None`` removes it.

        The teacher's inputs are part of the call, never assumed: a teacher fed another
        normalisation than it was trained with loses accuracy without a word (an MNIST CNN
        trained on mean 0.1307 / std 0.3081 inputs falls from 99 % to 88 % on inputs in [-1, 1]).
        So ``teacher`` is either a :class:`~deit.models.teacher_output.TeacherInputNorm`, which
        converts the student's batches to the teacher's statistics (and size), as timm's
        ``DistillationTeacher.normalize_input`` (``timm/task/distillation.py``), or any module
        with ``inputs="student"``: it takes the student's batches as they are.
        """
        if teacher is not None:
            if not isinstance(teacher, nn.Module):
                raise ConfigError(f"teacher must be an nn.Module or None, got {type(teacher).__name__}")
            if teacher is self:
                raise ConfigError("a DeiT cannot be its own teacher")
            if inputs not in (None, "student"):
                raise ConfigError(f"inputs={inputs!r} is invalid; expected 'student' (the teacher takes the student's "
                                  "batches as they are) or None with a TeacherInputNorm teacher")
            if inputs is None and not isinstance(teacher, TeacherInputNorm):
                raise ConfigError(
                    f"which inputs does the teacher {type(teacher).__name__} take? Pass inputs='student' "
                    "(DeiT(teacher_inputs='student')) if it was trained on images normalised as the student's, or "
                    "wrap it as deit.TeacherInputNorm(teacher, student_mean=..., student_std=..., teacher_mean=..., "
                    "teacher_std=..., input_size=...) to convert the student's batches to its own statistics "
                    "(docs/training.md, 'A teacher of your own')")
            teacher.eval()
            teacher.requires_grad_(False)
            ref = self.pos_embed
            # channels_last: the memory format oneDNN's (depthwise) convolutions are fastest in
            # (the teacher-forward rows of benchmarks/README.md)
            teacher.to(device=ref.device, dtype=ref.dtype, memory_format=torch.channels_last)
        self._teacher_ref = TeacherRef(teacher)  # a new holder: deep copies keep sharing the old one

    def loadTeacherModel(self, checkpoint: str | os.PathLike | None = None) -> nn.Module:  # noqa: N802 (seed API)
        """Build the teacher named by ``teacher_model_name``, load its weights from a
        checkpoint, freeze it and put it in eval mode.

        The checkpoint is ``checkpoint`` if given, else ``teacher_checkpoint``, else
        ``<name>.safetensors`` / ``<name>.pth`` in ``checkpoint_dir`` or
        ``$DEIT_CHECKPOINT_DIR``. A missing or mismatching file raises
        :class:`deit.weights.layouts.CheckpointError` naming the path(s) tried.
        """
        # the one call from a model up to the file layer: the seed API loads the teacher itself
        from deit.distill.teachers import load_teacher

        if not isinstance(self.teacher_model_name, str):
            raise ConfigError("loadTeacherModel() needs teacher_model_name to be a model name; "
                              f"got {self.teacher_model_name!r}")
        teacher = load_teacher(
            self.teacher_model_name,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.image_size,
            checkpoint=checkpoint if checkpoint is not None else self.teacher_checkpoint,
            checkpoint_dir=self.checkpoint_dir,
        )
        self.set_teacher(teacher, inputs="student")  # load_teacher has settled the teacher's inputs
        return teacher

    def teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, num_classes) for ``x``, computed by
        :func:`deit.models.teacher_output.teacher_logits` (eval mode, inference mode, no
        gradient, usable as a loss target)."""
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError("this DeiT has no teacher: pass teacher_model_name= or call set_teacher()")
        return teacher_logits(teacher, x, self.num_classes)  # (B, K)

    def _apply(self, fn: Callable, recurse: bool = True):
        """Move/cast the teacher with the student although it is not a submodule."""
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self
