"""One dataclass for every knob of a training run (nanoGPT style), loadable from YAML and
overridable from the command line; the resolved config is written to the run directory.

Defaults are the paper's recipe (Table 9) and the official ``main.py``: AdamW, lr 5e-4 per
512 images, weight decay 0.05, 5 warm-up epochs then cosine, label smoothing 0.1,
stochastic depth 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8 /
CutMix 1.0 with switch probability 0.5, repeated augmentation x3, EMA 0.99996.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from deit._validation import check_choice


@dataclass
class TrainConfig:
    # --- model ---------------------------------------------------------------------------
    model: str = "deit_pico_distilled_patch4_32"
    num_classes: int | None = None  # None: the data set's
    image_size: int | None = None  # None: the data set's native size (ImageFolder: the model's)
    in_channels: int | None = None  # None: the data set's (grey data replicated if 3 is asked)
    drop_path: float = 0.1
    finetune: str | None = None  # start from these weights (pos-embed resized, new head if needed)
    # --- teacher and distillation (paper §4) -----------------------------------------------
    teacher_model: str | None = None  # "ConvNeXt", a registered name, "timm:<name>"
    teacher_checkpoint: str | None = None
    distillation_type: str = "none"  # none | soft | hard
    distillation_alpha: float | None = None  # None: 0.1 soft, 0.5 hard (paper)
    distillation_tau: float | None = None  # None: 3.0 (paper)
    kl_reduction: str = "batchmean"
    # --- data ----------------------------------------------------------------------------
    dataset: str = "digits"  # digits | fashion-mnist | mnist | path to an ImageFolder root
    data_dir: str | None = None
    train_subset: int | None = None  # use only the first N training images (budgeted runs)
    val_subset: int | None = None  # evaluate on N validation images spread over the set (budgeted runs)
    num_workers: int = 0
    bad_images: str = "fail"  # image folders: fail on an unreadable file (naming it) | skip it, counted in the log
    # --- optimisation --------------------------------------------------------------------
    epochs: int = 300
    batch_size: int = 64  # per process and per step; the effective batch multiplies in accum_steps
    accum_steps: int = 1
    lr: float = 5e-4  # for an effective batch of 512: scaled linearly to the actual one
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    clip_grad: float | None = None
    # --- augmentation --------------------------------------------------------------------
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float | None = 0.3
    reprob: float = 0.25
    hflip: float | None = None  # None: 0.5, or 0 for data where a flip changes the class (digits)
    scale: tuple[float, float] = (0.08, 1.0)
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    repeated_aug: int = 3
    # --- numerics ------------------------------------------------------------------------
    amp: bool = False  # bf16 autocast on CPU; bf16 / fp16 (+ grad scaler) on CUDA
    amp_dtype: str = "bfloat16"
    compile: bool = False  # torch.compile the student (pays off on CUDA; CPU compile takes ~1 min)
    model_ema: bool = True
    model_ema_decay: float = 0.99996
    # --- run -----------------------------------------------------------------------------
    output: str = "runs/train"
    seed: int = 0
    deterministic: bool = False  # deterministic kernels only (CUDA); CPU runs are reproducible without it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue the run in `output` from its last checkpoint
    eval_interval: int = 1  # evaluate every N epochs (the last epoch is always evaluated)
    stop_after_epochs: int | None = None  # end this invocation after N epochs (time-limited job slots); resume later
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run

    # ---------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first invalid field and what it accepts."""
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; expected a positive integer")

        def in_range(name: str, low: float, high: float, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name}={value!r} is invalid; expected a number in [{low}, {high}]")

        for name in ("epochs", "batch_size", "accum_steps", "repeated_aug", "eval_interval"):
            positive_int(name)
        for name in ("num_classes", "image_size", "in_channels", "train_subset", "val_subset", "stop_after_epochs"):
            if getattr(self, name) is not None:
                positive_int(name)
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers!r} is invalid; expected an integer >= 0")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} is invalid; expected an integer >= 0")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs} "
                             "(the cosine schedule follows the warm-up)")
        for name in ("lr", "min_lr", "warmup_lr"):
            in_range(name, 0.0, 10.0)
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} is invalid; expected a learning rate > 0")
        in_range("weight_decay", 0.0, 10.0)
        in_range("clip_grad", 1e-12, 1e12, allow_none=True)
        for name in ("drop_path", "reprob", "mixup_prob", "mixup_switch_prob", "smoothing"):
            in_range(name, 0.0, 1.0)
        in_range("hflip", 0.0, 1.0, allow_none=True)
        in_range("color_jitter", 0.0, 1.0, allow_none=True)
        for name in ("mixup", "cutmix"):
            in_range(name, 0.0, 100.0)
        in_range("model_ema_decay", 0.0, 1.0)
        in_range("distillation_alpha", 0.0, 1.0, allow_none=True)
        if self.distillation_tau is not None:
            in_range("distillation_tau", 1e-6, 1e6)
        if (not isinstance(self.scale, (tuple, list)) or len(self.scale) != 2
                or not 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale={self.scale!r} is invalid; expected two numbers 0 < min <= max <= 1")
        check_choice("distillation_type", self.distillation_type, ("none", "soft", "hard"))
        check_choice("kl_reduction", self.kl_reduction, ("batchmean", "official"))
        check_choice("bad_images", self.bad_images, ("fail", "skip"))
        check_choice("amp_dtype", self.amp_dtype, ("bfloat16", "float16"))
        if self.distillation_type != "none" and not self.teacher_model:
            raise ValueError(f"distillation_type={self.distillation_type!r} needs a teacher: set teacher_model "
                             "(e.g. 'ConvNeXt') and its checkpoint, or use distillation_type='none'")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device={self.device!r} is invalid; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r} is invalid; expected a registered model name")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in FIELD_NAMES}


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a config; unknown keys are errors that list the valid ones."""
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid settings: "
                         f"{', '.join(FIELD_NAMES)}")
    values = dict(data)
    if "scale" in values and isinstance(values["scale"], list):
        values["scale"] = tuple(values["scale"])
    for name, value in values.items():
        base, optional = _unwrap_optional(field_types()[name])
        if value is None:
            if not optional:
                raise ValueError(f"{source}: {name} may not be empty (null)")
            continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif base in (int, str, bool) and not isinstance(value, base):
            raise ValueError(f"{source}: {name}={value!r} is invalid; expected {base.__name__}")
        elif base is bool and not isinstance(value, bool):
            raise ValueError(f"{source}: {name}={value!r} is invalid; expected true or false")
        if base is int and isinstance(value, bool):
            raise ValueError(f"{source}: {name}={value!r} is invalid; expected an integer")
    return TrainConfig(**values).validate()


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < YAML file < overrides (e.g. command-line flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
        data.update(loaded or {})
    data.update(overrides or {})
    return config_from_dict(data, source=str(path) if path else "config")


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy with some fields changed."""
    return dataclasses.replace(config, **changes).validate()


# --- command-line flags generated from the dataclass --------------------------------------

def _parse_optional(base: type):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def add_config_arguments(parser) -> None:
    """One ``--flag`` per field (``--batch-size``, ``--no-amp`` …); unset flags stay absent so
    that a YAML file's values are not overwritten by defaults."""
    import argparse

    for name, annotation in field_types().items():
        if name == "extra":
            continue
        flag = "--" + name.replace("_", "-")
        base, optional = _unwrap_optional(annotation)
        default = getattr(TrainConfig(), name)
        help_text = f"(default: {default!r})"
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(base) is tuple:
            parser.add_argument(flag, dest=name, type=float, nargs=2, metavar=("MIN", "MAX"),
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parse = _parse_optional(base) if optional else base
            parser.add_argument(flag, dest=name, type=parse, default=argparse.SUPPRESS, help=help_text)


def overrides_from_args(args) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in FIELD_NAMES if hasattr(args, name)}
    if "scale" in values:
        values["scale"] = tuple(values["scale"])
    return values
