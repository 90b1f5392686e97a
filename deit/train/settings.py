"""One dataclass for every knob of a training run (nanoGPT style), loadable from YAML and
overridable from the command line; the resolved config is written to the run directory.

Defaults are the paper's recipe (Table 9) and the official ``main.py``: AdamW, lr 5e-4 per
512 images, weight decay 0.05, 5 warm-up epochs then cosine, label smoothing 0.1,
stochastic depth 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8 /
CutMix 1.0 with switch probability 0.5, repeated augmentation x3, EMA 0.99996.

A recipe (``--recipe NAME``, or ``recipe: NAME`` in a --config file) is a YAML file of
settings shipped in ``deit/train/recipes/`` for another regime than the paper's, or ``paper``
(:data:`PAPER_RECIPE`), the defaults themselves. Precedence: dataclass defaults < recipe <
--config file < flags, so a recipe only moves the defaults. The recipe's distillation
settings apply only to a run with a teacher (:data:`RECIPE_TEACHER_KEYS`). A run that
names no recipe gets the one its data call for (:func:`recipe_for_data`), chosen by
``deit.train.run`` once the training set is loaded and applied under the settings given
(:func:`apply_recipe`).

The run's length is ``epochs``, or a budget of training images (``budget_images``) or of
minutes (``budget_minutes``, turned into images by a measured rate): see
:mod:`deit.train.budget`.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
import textwrap
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from deit.core.errors import ConfigError
from deit.core.fileio import write_text_atomic
from deit.core.validation import check_choice
from deit.data.datasets import BAD_IMAGE_POLICIES
from deit.distill.losses import DISTILLATION_TYPES, KL_REDUCTIONS


class _Yaml12NumbersLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``5e-4``, ``1e-5`` and ``.05`` are numbers,
    as people write them (the official DeiT repo's ``--lr 5e-4``), where YAML 1.1 reads an
    exponent without a dot as a string."""


_Yaml12NumbersLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """A YAML document, numbers read as YAML 1.2 reads them (:class:`_Yaml12NumbersLoader`)."""
    return yaml.load(text, Loader=_Yaml12NumbersLoader)  # noqa: S506 (a SafeLoader subclass)


def _recipe_folder():
    """``deit/train/recipes`` as an ``importlib.resources`` Traversable (a folder, or inside a zip)."""
    return importlib.resources.files("deit.train") / "recipes"


def available_recipes() -> tuple[str, ...]:
    """Names of the shipped recipes: the ``deit/train/recipes/*.yaml`` files without the suffix."""
    folder = _recipe_folder()
    if not folder.is_dir():
        return ()
    return tuple(sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml")))


PAPER_RECIPE = "paper"
"""The recipe name of the dataclass defaults, the paper's ImageNet recipe (Table 9): no
file, nothing moved. ``--recipe none`` and ``recipe: null`` written in a --config file
mean it too (every config.yaml written before runs recorded their recipe says null)."""


def recipe_names() -> tuple[str, ...]:
    """Every value ``recipe`` takes: the shipped recipes and :data:`PAPER_RECIPE`."""
    return (*available_recipes(), PAPER_RECIPE)


SMALL_DATA_MAX_IMAGES = 100_000
"""Fewer training images than this make a data set small (:func:`recipe_for_data`)."""
SMALL_DATA_MAX_SIDE = 64
"""Images of fewer pixels than this on their longer side make a data set small."""
SMALL_DATA_RECIPE = "small-data"


_RECIPE_HELP = ("paper (the paper's ImageNet recipe, Table 9: the defaults; also 'none') or a "
                "recipe shipped with deit, settings for another regime applied under --config and "
                "these flags (`deit recipes` describes them: "
                f"{', '.join(available_recipes())}); without a teacher its distillation settings "
                "are dropped. Not given: chosen by the data and logged, small-data for fewer than "
                f"{SMALL_DATA_MAX_IMAGES:,} training images or images under {SMALL_DATA_MAX_SIDE} px "
                "(every built-in data set), else paper (a --finetune run: paper); config.yaml "
                "records the choice")


TEACHER_SETTINGS = ("teacher_checkpoint", "teacher_pretrained", "teacher_mean", "teacher_std")
"""Settings that apply to the teacher of ``teacher_model`` only: given without a teacher,
:meth:`TrainConfig.validate` refuses them rather than ignoring them."""


def setting(default: Any, group: str, help: str, *, choices: Sequence[str] | None = None, positive: bool = False,
            within: tuple[float, float] | None = None) -> Any:
    """A :class:`TrainConfig` field described once: its ``--help`` group (a key of :data:`GROUPS`)
    and text (a default that is the paper's value says "(paper: …)", Touvron et al. 2021), and the
    values it takes: one of ``choices``, a ``positive`` integer, or a number ``within`` a closed
    range (``None`` too where the type allows it). The command-line flags and ``--help``
    (:func:`add_config_arguments`), the checks (``TrainConfig.validate``) and :data:`HELP` /
    :data:`CHOICES` are made from it."""
    return field(default=default, metadata=dict(group=group, help=help, choices=choices, positive=positive,
                                                within=within))


@dataclass
class TrainConfig:
    # --- model ---------------------------------------------------------------------------
    model: str = setting("deit_pico_distilled_patch4_32", "model",
        "registered architecture of the student (`deit list-models`), e.g. deit_tiny_distilled_patch16_224 (paper"
        " Table 1)")
    num_classes: int | None = setting(None, "model", "number of classes; none: the data set's", positive=True)
    image_size: int | None = setting(None, "model",
        "input side in pixels; none: the data set's native size (image folders: the model's own, 224 for the "
        "paper's models)", positive=True)
    in_channels: int | None = setting(None, "model",
        "input channels, 1 or 3; none: the data set's (grey data sets and folders of grey images: 1; 3 replicates"
        " the grey channel)", positive=True)
    drop_path: float = setting(0.1, "model",
        "stochastic depth rate, rising linearly over the blocks (paper: 0.1, Table 9)", within=(0.0, 1.0))
    finetune: str | None = setting(None, "model",
        "start from these weights: a file (any supported format, docs/models.md), a registered name meaning its "
        "published weights, or a URL (downloaded into the verified cache); the position embedding is resampled to"
        " --image-size, a head of another size re-initialised")
    # --- teacher and distillation (paper §4) -----------------------------------------------
    teacher_model: str | None = setting(None, "distillation",
        "the teacher: 'ConvNeXt', a registered name, 'timm:<name>', 'torchvision:<name>', an HF "
        "save_pretrained folder, 'path/to/file.py:factory' or a .onnx file run by ONNX Runtime (the paper's best "
        "teacher is a RegNetY-16GF convnet, Table 2)")
    teacher_checkpoint: str | None = setting(None, "distillation",
        "weights file of the teacher: written by deit train, save_model, timm or torchvision (a state dict) or an "
        "official release; for torchvision:<name> also a weights name (IMAGENET1K_V1, DEFAULT) read from "
        "torchvision's cache")
    teacher_pretrained: bool = setting(False, "distillation",
        "load the teacher's published weights (registered names with published weights, docs/models.md): "
        "checkpoint folder, download cache, else downloaded and verified; --teacher-checkpoint wins when given")
    teacher_mean: list[float] | None = setting(None, "distillation",
        "per-channel mean (1 or 3 values in [0, 1]) the teacher was trained with; none: its checkpoint's "
        "data_config, else its published weights' configuration, else the student's. Inputs are re-normalised for"
        " the teacher when it differs (as timm's distillation task)")
    teacher_std: list[float] | None = setting(None, "distillation",
        "per-channel std the teacher was trained with (see --teacher-mean)")
    distillation_type: str = setting("none", "distillation",
        "objective of the distillation head: none, soft (KL to the teacher's softened output) or hard "
        "(cross-entropy to the teacher's argmax, the paper's best, Table 3)", choices=DISTILLATION_TYPES)
    distillation_alpha: float | None = setting(None, "distillation",
        "lambda, weight of the distillation term; none: the paper's 0.1 for soft and 0.5 for hard (§4; the "
        "official code's flag defaults to 0.5)", within=(0.0, 1.0))
    distillation_tau: float | None = setting(None, "distillation",
        "tau, temperature of soft distillation; none: the paper's 3.0 (§4; the official code's flag defaults to "
        "1.0)", within=(1e-6, 1e6))
    kl_reduction: str = setting("batchmean", "distillation",
        "reduction of the soft KL term: batchmean (per sample, the KL's definition) or official (divided by batch"
        " x classes, as the official losses.py)", choices=KL_REDUCTIONS)
    teacher_cache: str | None = setting(None, "distillation",
        "directory storing the teacher's outputs for the exact views the student sees (augmentations replayed "
        "from seed, epoch and position, TinyViT's fast distillation): read where present, computed live and "
        "stored where not; fill it ahead with deit cache-teacher. Refused if made with other settings")
    teacher_cache_topk: int = setting(10, "distillation",
        "soft distillation from a teacher cache: logits stored per view (the rest of the probability mass is "
        "spread evenly, as TinyViT)")
    teacher_memo: bool = setting(True, "distillation",
        "when the training views repeat (whole images, at most a flip: no random crop, RandAugment, colour "
        "jitter, erasing, Mixup or CutMix), keep the teacher's logits per distinct view in memory, so the teacher"
        " runs once per view instead of once per step (deit.distill.memo); the targets are the live teacher's")
    # --- data ----------------------------------------------------------------------------
    dataset: str = setting("digits", "data",
        "digits, fashion-mnist, mnist, or the path of an image folder holding train/ and val/ with one sub-folder"
        " per class")
    data_dir: str | None = setting(None, "data",
        "folder with the four IDX files: required for mnist; for fashion-mnist none means the Debian package's "
        "/usr/share/datasets/fashion-mnist")
    train_subset: int | None = setting(None, "data",
        "train on N images only, a class-stratified choice seeded by --seed that keeps the class proportions "
        "(budgeted runs)", positive=True)
    val_subset: int | None = setting(None, "data",
        "evaluate on N validation images spread evenly over the set (budgeted runs)", positive=True)
    num_workers: int = setting(0, "data",
        "data-loader worker processes; 0 loads in the training process (best with 2 cores)")
    keep_decoded: bool = setting(True, "data",
        "keep an image folder's decoded images in memory, up to 1 GiB of pixels per split, so each file is "
        "decoded once rather than every epoch (loaded in the training process: --num-workers 0)")
    bad_images: str = setting("fail", "data",
        "image folders: fail on an unreadable file, naming it, or skip it, counted "
        "in the log", choices=BAD_IMAGE_POLICIES)
    # --- optimisation --------------------------------------------------------------------
    recipe: str | None = setting(None, "optimisation", _RECIPE_HELP)
    epochs: int = setting(300, "optimisation",
        "training epochs (paper: 300, Table 9); ignored when --budget-images or --budget-minutes "
        "sets the length", positive=True)
    budget_images: int | None = setting(None, "optimisation",
        "the run's length as training images seen (updates x effective batch, all processes), instead of "
        "--epochs: round(N / effective batch) updates, the last epoch cut short where they end, the cosine decay "
        "spanning exactly them; config.yaml records it with the epochs it comes to")
    budget_minutes: float | None = setting(None, "optimisation",
        "the run's length as minutes of training (evaluation comes on top): a short timed calibration of the real"
        " training step on a copy of the student turns it into --budget-images, which config.yaml records (a "
        "resume or a rerun from it does not measure again)")
    batch_size: int = setting(64, "optimisation",
        "images per process and step; the effective batch is batch-size x accum-steps x processes (paper: 1024, "
        "Table 9)", positive=True)
    accum_steps: int = setting(1, "optimisation",
        "steps whose gradients are summed per update, so the effective batch does not depend on memory", positive=True)
    lr: float = setting(5e-4, "optimisation",
        "peak learning rate for an effective batch of 512 (paper: 5e-4, Table 9); the run uses lr x effective "
        "batch / 512, the paper's rule (Table 9: 0.0005 x batchsize / 512; official main.py), and prints that "
        "value at the start", within=(0.0, 10.0))
    min_lr: float = setting(1e-5, "optimisation",
        "learning rate at the end of the cosine decay (official main.py: 1e-5)", within=(0.0, 10.0))
    warmup_lr: float = setting(1e-6, "optimisation",
        "learning rate at the start of the linear warm-up (official main.py: 1e-6)", within=(0.0, 10.0))
    warmup_epochs: float = setting(5, "optimisation",
        "epochs of linear warm-up before the cosine decay (paper: 5, Table 9); a run of no more epochs warms up "
        "for epochs - 1, with a notice")
    warmup_fraction: float | None = setting(None, "optimisation",
        "linear warm-up as a share in [0, 1) of the run's updates, for any data size or budget; wins over "
        "--warmup-epochs")
    weight_decay: float = setting(0.05, "optimisation",
        "AdamW weight decay, not applied to biases, norms, tokens and position embedding "
        "(paper: 0.05, Table 9)", within=(0.0, 10.0))
    clip_grad: float | None = setting(None, "optimisation",
        "maximum gradient norm; none: no clipping (paper: none, Table 9)", within=(1e-12, 1e12))
    # --- augmentation --------------------------------------------------------------------
    auto_augment: str | None = setting("rand-m9-mstd0.5-inc1", "augmentation",
        "timm RandAugment policy, or none (paper: rand-m9-mstd0.5-inc1, Table 9)")
    color_jitter: float | None = setting(0.3, "augmentation",
        "colour jitter strength, applied only when --auto-augment is none (official main.py: 0.3)", within=(0.0, 1.0))
    reprob: float = setting(0.25, "augmentation",
        "random erasing probability (paper: 0.25, Table 9)", within=(0.0, 1.0))
    hflip: float | None = setting(None, "augmentation",
        "horizontal flip probability; none: 0.5, or 0 for data sets where a mirror image is another class "
        "(digits, mnist)", within=(0.0, 1.0))
    scale: tuple[float, float] = setting((0.08, 1.0), "augmentation",
        "area range of the random resized crop (official main.py: 0.08 1.0)")
    crops_from_epochs: int | None = setting(None, "augmentation",
        "from this many epochs on, the run trains on random-resized crops of --crops-scale instead of --scale, "
        "unless --scale is given: a long schedule of a small folder, decided from the planned epochs before the "
        "run (none: always --scale)", positive=True)
    crops_scale: tuple[float, float] = setting((0.5, 1.0), "augmentation",
        "the crop area range --crops-from-epochs switches to")
    mixup: float = setting(0.8, "augmentation",
        "Mixup alpha, 0 turns it off (paper: 0.8, Table 9)", within=(0.0, 100.0))
    cutmix: float = setting(1.0, "augmentation",
        "CutMix alpha, 0 turns it off (paper: 1.0, Table 9)", within=(0.0, 100.0))
    mixup_prob: float = setting(1.0, "augmentation",
        "probability of mixing a batch with Mixup or CutMix (official main.py: 1.0)", within=(0.0, 1.0))
    mixup_switch_prob: float = setting(0.5, "augmentation",
        "probability of CutMix rather than Mixup when both are on (official main.py: 0.5)", within=(0.0, 1.0))
    smoothing: float = setting(0.1, "augmentation", "label smoothing (paper: 0.1, Table 9)", within=(0.0, 1.0))
    repeated_aug: int = setting(3, "augmentation",
        "repeated augmentation: differently augmented copies of each image per epoch, 1 turns it off (paper: 3, "
        "Table 9)", positive=True)
    # --- numerics ------------------------------------------------------------------------
    amp: bool = setting(False, "run",
        "mixed precision: bf16 autocast on CPU (fp32, with a warning, on a CPU without bf16 units); bf16 or fp16 "
        "(with a gradient scaler) on CUDA")
    amp_dtype: str = setting("bfloat16", "run", "autocast dtype of --amp", choices=("bfloat16", "float16"))
    compile: bool = setting(False, "run",
        "torch.compile the student (pays off on CUDA; on CPU compiling takes about a minute)")
    model_ema: bool = setting(True, "optimisation",
        "keep an exponential moving average of the weights, evaluated and saved every epoch (official main.py: "
        "on)")
    model_ema_decay: float = setting(0.99996, "optimisation",
        "EMA decay per update (official main.py: 0.99996)", within=(0.0, 1.0))
    # --- run -----------------------------------------------------------------------------
    output: str = setting("runs/train", "run",
        "run directory: config.yaml, last.pth, best.pth, metrics.csv, curves.png, summary.json")
    seed: int = setting(0, "run", "random seed of the sample order, augmentations, initial weights and --train-subset")
    deterministic: bool = setting(False, "run",
        "deterministic kernels only (CUDA); CPU runs are reproducible without it")
    device: str = setting("auto", "run", "auto (CUDA if available), cpu, cuda or cuda:N")
    resume: bool = setting(False, "run", "continue the run in --output from its last.pth")
    eval_interval: int = setting(1, "run",
        "evaluate every N epochs (the last epoch is always evaluated)", positive=True)
    evaluations: int | None = setting(None, "run",
        "evaluate about N times, at evenly spaced epochs (the last always), whatever the run's epochs; replaces "
        "--eval-interval (a budget on a small folder makes many short epochs)", positive=True)
    stop_after_epochs: int | None = setting(None, "run",
        "end this invocation after N epochs (time-limited job slots); continue later with --resume", positive=True)
    progress: bool = setting(True, "run", "progress bars")
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run


    def __post_init__(self) -> None:
        # Not a setting: the names load_config saw in the --config file and the flags, which a
        # recipe chosen later by the data may not change (apply_recipe). None for a config
        # built directly, whose recipe=None then means the defaults, the paper's.
        self.settings_given: frozenset[str] | None = None

    # ---------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first invalid field, what it accepts, and the
        ``deit train`` flag and YAML key that set it (:func:`name_flag`)."""
        try:
            return self._validate()
        except ValueError as err:
            raise ConfigError(name_flag(str(err))) from None

    def _validate(self) -> "TrainConfig":
        for item in fields(self):  # the values each field takes, as its setting() describes them
            value, rule = getattr(self, item.name), item.metadata
            if value is None and _unwrap_optional(field_types()[item.name])[1]:
                continue
            if rule.get("positive") and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{item.name}={value!r} is invalid; expected a positive integer")
            low, high = rule.get("within") or (None, None)
            if low is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    or not low <= value <= high):
                raise ConfigError(f"{item.name}={value!r} is invalid; expected a number in [{low}, {high}]")
        self._validate_budget()
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers!r} is invalid; expected an integer >= 0")
        if (isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, (int, float))
                or not 0 <= self.warmup_epochs < float("inf")):
            raise ConfigError(f"warmup_epochs={self.warmup_epochs!r} is invalid; expected a number of epochs >= 0 "
                              "(fractions allowed)")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr!r} is invalid; expected a learning rate > 0")
        if self.batch_size % 2 and self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0):
            raise ConfigError(f"batch_size={self.batch_size} (--batch-size) is odd, but Mixup/CutMix (--mixup "
                              f"{self.mixup}, --cutmix {self.cutmix}) pair each image with the batch's reverse and "
                              "need an even batch; pass an even --batch-size, or --mixup 0 --cutmix 0")
        for name in ("scale", "crops_scale"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
                raise ConfigError(f"{name}={value!r} is invalid; expected two numbers 0 < min <= max <= 1")
        check_recipe_name(self.recipe)  # its own message: None is allowed, and a file path is a --config
        for name, allowed in CHOICES.items():
            if name != "recipe":
                check_choice(name, getattr(self, name), allowed)
        if self.distillation_type != "none" and not self.teacher_model:
            raise ConfigError(f"distillation_type={self.distillation_type!r} needs a teacher: set --teacher-model "
                              "(teacher_model; e.g. 'ConvNeXt') and its weights, or use --distillation-type none (in "
                              "Python, teacher_model='module:<label>' for a module given as train(config, teacher=))")
        for name in ("teacher_mean", "teacher_std"):
            values = getattr(self, name)
            if values is not None and (not isinstance(values, (list, tuple)) or len(values) not in (1, 3) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)):
                raise ConfigError(f"{name}={values!r} is invalid; expected 1 or 3 numbers in [0, 1] (one per channel "
                                  "of the teacher's input, in the units of pixels scaled to [0, 1])")
        if self.teacher_cache is not None and self.distillation_type == "none":
            raise ConfigError(f"teacher_cache={self.teacher_cache!r} stores distillation targets, but "
                              "distillation_type is 'none'; set --distillation-type hard or soft, or drop "
                              "--teacher-cache")
        if isinstance(self.teacher_cache_topk, bool) or not isinstance(self.teacher_cache_topk, int) \
                or self.teacher_cache_topk < 1:
            raise ConfigError(f"teacher_cache_topk={self.teacher_cache_topk!r} is invalid; expected a positive "
                              "integer (logits kept per view)")
        self._validate_teacher_given()
        if (self.teacher_mean is None) != (self.teacher_std is None):
            raise ConfigError(f"teacher_mean={self.teacher_mean!r} and teacher_std={self.teacher_std!r}: give both "
                              "(--teacher-mean and --teacher-std) or neither")
        if self.teacher_std is not None and min(self.teacher_std) <= 0:
            raise ConfigError(f"teacher_std={self.teacher_std!r} is invalid; expected standard deviations > 0")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device={self.device!r} is invalid; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model={self.model!r} is invalid; expected a registered model name")
        return self

    def _validate_teacher_given(self) -> None:
        """A setting of the teacher (:data:`TEACHER_SETTINGS`) given without ``teacher_model``
        would be ignored, as there is no teacher to apply it to: an error naming its flag and key."""
        if self.teacher_model:
            return
        for name in TEACHER_SETTINGS:
            value = getattr(self, name)
            if value is not None and value is not False:
                raise ConfigError(f"{name}={value!r} needs a teacher: set --teacher-model NAME (teacher_model: in a "
                                  f"--config file) to the teacher's architecture, or drop {flag(name)} ({name}: in a "
                                  "--config file); without a teacher it would be ignored (in Python, "
                                  "teacher_model='module:<label>' for a module given as train(config, teacher=))")

    def _validate_budget(self) -> None:
        """``budget_images``, ``budget_minutes`` (at most one of them) and ``warmup_fraction``."""
        images, minutes, fraction = self.budget_images, self.budget_minutes, self.warmup_fraction
        if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images <= 0):
            raise ConfigError(f"budget_images={images!r} is invalid; expected a positive integer: the training "
                              "images the run sees, updates x effective batch summed over processes")
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                    or not 0 < minutes < float("inf")):
            raise ConfigError(f"budget_minutes={minutes!r} is invalid; expected minutes of training > 0")
        if images is not None and minutes is not None:
            raise ConfigError(f"budget_images={images!r} and budget_minutes={minutes!r} both set the run's length; "
                              "give one of --budget-images and --budget-minutes (a run's config.yaml records "
                              "the images its minutes came to, with budget_minutes empty)")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 <= fraction < 1):
            raise ConfigError(f"warmup_fraction={fraction!r} is invalid; expected a share of the run's updates "
                              "in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """The settings as YAML values. A recipe not chosen yet is written as what it will be:
        left out for a config of load_config (loaded back, the data choose it again), and
        ``paper`` for a config built directly, whose defaults stand (``deit.train.run.settle_recipe``);
        ``recipe: null`` would mean ``paper`` to load_config either way."""
        data = asdict(self)
        data["scale"] = list(self.scale)
        data["crops_scale"] = list(self.crops_scale)
        if self.recipe is None and self.settings_given is None:
            data["recipe"] = PAPER_RECIPE
        elif self.recipe is None:
            del data["recipe"]
        return data

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))

# --- recipes: package data, read through importlib.resources so they work from a wheel ----

RECIPE_TEACHER_KEYS = ("distillation_type", "distillation_alpha", "distillation_tau")
"""Recipe settings that apply only to a run with a teacher, dropped without one: the same
recipe trains the distilled student and its plain control (the paper's Table 3 compares
the two)."""


def check_recipe_name(name: object) -> None:
    """Raise ``ConfigError`` unless ``name`` is None (not chosen yet) or a recipe's name."""
    if name is None or (isinstance(name, str) and name in recipe_names()):
        return
    names = ", ".join(repr(n) for n in available_recipes()) or "none installed"
    raise ConfigError(f"recipe={name!r} is not a recipe shipped with deit; expected one of: {names}, or "
                      f"{PAPER_RECIPE!r} (or none) for the paper's ImageNet recipe (set by --recipe, or recipe: "
                      "in a --config file; recipes are names only: a YAML file of your own is a --config file)")


def _recipe_text(name: str) -> str:
    check_recipe_name(name)
    return (_recipe_folder() / f"{name}.yaml").read_text(encoding="utf-8")


def recipe_values(name: str) -> dict[str, Any]:
    """The settings of recipe ``name``, type- and range-checked like a --config file;
    errors name the recipe file. :data:`PAPER_RECIPE` has none: it is the defaults."""
    if name == PAPER_RECIPE:
        return {}
    source = f"recipe {name!r} (deit/train/recipes/{name}.yaml)"
    try:
        loaded = load_yaml(_recipe_text(name))
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source} must hold a mapping of settings, got {type(loaded).__name__}")
    unknown = sorted(str(k) for k in loaded if k not in FIELD_NAMES or k == "recipe")
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)} (a recipe cannot name another "
                          f"recipe); valid settings: {', '.join(n for n in FIELD_NAMES if n != 'recipe')}")
    values = _typed(loaded, source)
    # ranges too, against the defaults; the teacher is the run's, so any name stands in for it here
    try:
        TrainConfig(**{"teacher_model": "teacher of the run", **values})._validate()
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    return values


def recipe_summary(name: str) -> str:
    """The first paragraph of the recipe file's header comment: what it is for."""
    if name == PAPER_RECIPE:
        return ("the paper's ImageNet recipe (Touvron et al. 2021, Table 9; official main.py), the defaults of "
                "deit train, made for 300 epochs of 1.28 M images")
    lines = []
    for line in _recipe_text(name).splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        lines.append(text)
    return " ".join(lines)


def describe_recipe(name: str) -> str:
    """The settings of ``deit train --recipe NAME`` without a teacher, every one resolved, as
    YAML a --config file can hold (a run's config.yaml holds them too, with the length it
    resolved to: under a budget, the epochs it took)."""
    values = recipe_values(name)
    with_teacher = {k: v for k, v in values.items() if k in RECIPE_TEACHER_KEYS}
    header = [f"deit train --recipe {name}: {recipe_summary(name)}",
              "Every setting, resolved (defaults < recipe < --config < flags): edit and pass as --config."]
    if with_teacher:
        shown = yaml.safe_dump(with_teacher, default_flow_style=True, sort_keys=False).strip()[1:-1]
        header.append(f"With a teacher (--teacher-model) the recipe also sets {shown}; they are left out below, "
                      "so that the recipe: key still applies them when the file or a flag names a teacher.")
    comment = "".join(textwrap.fill(line, 88, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
                      + "\n" for line in header)
    # the distillation keys stay out: an explicit "none" here would beat the recipe's once a
    # teacher is added to the file, and the recipe: key brings them back with a teacher
    settings = {k: v for k, v in load_config(None, {"recipe": name}).to_dict().items()
                if k not in RECIPE_TEACHER_KEYS}
    if settings.get("budget_images") is not None:  # the budget sets the length: epochs would be ignored
        settings.pop("epochs")
    return comment + yaml.safe_dump(settings, sort_keys=False)


LENGTH_KEYS = ("epochs", "budget_images", "budget_minutes")
"""The settings that state a run's length: one of them given in a --config file or a flag
replaces the recipe's length (``--epochs 30`` under a recipe with ``budget_images``) and the
warm-up share that goes with it (``warmup_fraction``: the recipe's ``warmup_epochs`` then
applies, as for a run counted in epochs)."""
WARMUP_KEYS = ("warmup_epochs", "warmup_fraction")
"""The settings that state a warm-up: one of them given replaces both of the recipe's."""


def _recipe_layer(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings recipe ``name`` lays under ``given`` (the --config file and flags): its
    :data:`RECIPE_TEACHER_KEYS` only if the run has a teacher, from ``given`` or the recipe."""
    recipe = recipe_values(name)
    if not {**recipe, **given}.get("teacher_model"):
        recipe = {k: v for k, v in recipe.items() if k not in RECIPE_TEACHER_KEYS}
    if any(given.get(key) is not None for key in LENGTH_KEYS):  # a length stated above the recipe replaces its own
        recipe = {k: v for k, v in recipe.items() if k not in LENGTH_KEYS and k != "warmup_fraction"}
    if any(given.get(key) is not None for key in WARMUP_KEYS):  # so does a warm-up: the flag wins, as every flag
        recipe = {k: v for k, v in recipe.items() if k not in WARMUP_KEYS}
    return recipe


def apply_recipe(config: TrainConfig, name: str) -> TrainConfig:
    """``config``, which names no recipe yet, under recipe ``name``: what :func:`load_config`
    gives with ``recipe: NAME`` added. The settings its --config file and flags gave
    (``config.settings_given``) win over the recipe; a config built directly has none on
    record, so every value of it wins."""
    given_names = config.settings_given if config.settings_given is not None else frozenset(FIELD_NAMES)
    given = {k: getattr(config, k) for k in given_names if k != "recipe"}
    values = config.to_dict()
    values.update({k: v for k, v in _recipe_layer(name, given).items() if k not in given}, recipe=name)
    settled = config_from_dict(values)
    settled.settings_given = config.settings_given
    return settled


def recipe_for_data(dataset: str, train_images: int, image_side: int | None, finetune: bool = False
                    ) -> tuple[str, str]:
    """The recipe of a run that names none, and why, as ``(name, reason)``.

    The rule: ``small-data`` (deit/train/recipes/small-data.yaml: 28-64 px, thousands to tens of
    thousands of images) for a data set that trains on fewer than
    :data:`SMALL_DATA_MAX_IMAGES` images or whose images are smaller than
    :data:`SMALL_DATA_MAX_SIDE` px on their longer side (``image_side``: the typical stored
    image, None if unknown), which takes in every built-in one (digits: 1,437 images of
    8 px; fashion-mnist, mnist: 60,000 of 28 px); ``paper`` otherwise: ImageNet-sized data,
    what the paper's recipe was made for (300 epochs of 1.28 M images of 224 px, Table 9).
    A run that starts from ``--finetune`` weights keeps ``paper``: the small-data values
    were chosen by a sweep of students trained from scratch (benchmarks/small_data_sweep.md).
    """
    side = f"of {image_side} px" if image_side is not None else "of unknown size"
    described = f"{dataset} trains on {train_images:,} images {side}"
    if finetune:
        return PAPER_RECIPE, f"the run starts from --finetune weights ({described}; the small-data values were " \
                             "chosen for training from scratch)"
    if train_images < SMALL_DATA_MAX_IMAGES:
        return SMALL_DATA_RECIPE, f"{described}, fewer than {SMALL_DATA_MAX_IMAGES:,}"
    if image_side is not None and image_side < SMALL_DATA_MAX_SIDE:
        return SMALL_DATA_RECIPE, f"{described}, smaller than {SMALL_DATA_MAX_SIDE} px"
    return PAPER_RECIPE, f"{described}: ImageNet-sized (at least {SMALL_DATA_MAX_IMAGES:,} images of at least " \
                         f"{SMALL_DATA_MAX_SIDE} px)"


# --- what each setting means: the one source of `deit train --help` and of choice checks ----


GROUPS: dict[str, str] = {
    "model": "the student network",
    "distillation": "teacher and distillation (paper §4)",
    "data": "data set and loading",
    "optimisation": "optimiser, schedule and weight averaging (paper Table 9; official main.py)",
    "augmentation": "augmentation and regularisation of the inputs (paper Table 9)",
    "run": "run directory, resuming, device and numerics",
}
"""``deit train --help`` sections, in order: group -> description."""

HELP: dict[str, tuple[str, str]] = {f.name: (f.metadata["group"], f.metadata["help"])
                                    for f in fields(TrainConfig) if f.metadata}
"""Per setting: its ``--help`` group (a key of :data:`GROUPS`) and description, from its field.
The flag of field ``name`` is ``--name-with-dashes``; booleans also have ``--no-name``."""

CHOICES: dict[str, tuple[str, ...]] = {
    **{f.name: tuple(f.metadata["choices"]) for f in fields(TrainConfig) if f.metadata.get("choices")},
    "recipe": recipe_names(),
}
"""Settings that take one of a fixed set of strings (checked by ``validate``, shown by ``--help``)."""


_METAVARS = {"device": "{auto,cpu,cuda,cuda:N}"}


def flag(name: str) -> str:
    """The ``deit train`` flag of setting ``name``: ``warmup_epochs`` -> ``--warmup-epochs``."""
    return "--" + name.replace("_", "-")


def name_flag(message: str) -> str:
    """``message`` about a setting (starting ``name=value``, optionally after ``source: ``)
    with the flag and YAML key that set it appended, for command-line and YAML users alike."""
    match = re.match(r"(?:[^=\s]+: )?(\w+)=", message)
    if match is None or match.group(1) not in FIELD_NAMES or flag(match.group(1)) in message:
        return message
    name = match.group(1)
    return f"{message} (set by {flag(name)}, or {name}: in a --config file)"


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


@functools.cache
def field_types() -> types.MappingProxyType:
    """Each field's type annotation, resolved once (``validate`` reads it for every field)."""
    hints = typing.get_type_hints(TrainConfig)
    return types.MappingProxyType({name: hints[name] for name in FIELD_NAMES})


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a config; unknown keys are errors that list the valid ones."""
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid settings: "
                          f"{', '.join(FIELD_NAMES)}")
    return TrainConfig(**_typed(data, source)).validate()


def _typed(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Known settings from YAML or flags, type-checked (:func:`_check_types`), ``scale`` a tuple."""
    values = dict(data)
    for name in ("scale", "crops_scale"):
        if name in values and isinstance(values[name], list):
            values[name] = tuple(values[name])
    try:
        _check_types(values, source)
    except ValueError as err:
        raise ConfigError(name_flag(str(err))) from None
    return values


_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


@functools.cache
def _type_adapter(annotation: Any):
    import pydantic

    return pydantic.TypeAdapter(annotation)


def _check_types(values: dict[str, Any], source: str) -> None:
    """Each value converted to its field's type by pydantic (lax mode: ``"5e-4"`` and ``5`` are
    numbers for a float, ``1.5e6`` an integer for an int, ``[0.5, 1]`` a pair for a tuple), in
    place; a value of another kind is one line naming the setting. A YAML boolean is no number."""
    import pydantic

    for name, value in values.items():
        annotation = field_types()[name]
        base, optional = _unwrap_optional(annotation)
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: {name} may not be empty (null); set it by {flag(name)}, or "
                                  f"{name}: in a --config file")
            continue
        expected = _EXPECTED.get(base, "two numbers" if typing.get_origin(base) is tuple else "a list of numbers")
        if isinstance(value, bool) is not (base is bool):
            raise ConfigError(f"{source}: {name}={value!r} is invalid; expected {expected}")
        try:
            values[name] = _type_adapter(base).validate_python(value)
        except pydantic.ValidationError:
            raise ConfigError(f"{source}: {name}={value!r} is invalid; expected {expected}") from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < overrides (e.g. command-line flags).

    The recipe is the ``recipe`` setting of the file or the overrides; ``None`` written
    there (``--recipe none``, ``recipe: null``) is :data:`PAPER_RECIPE`, no recipe, and
    turns off the file's. Its :data:`RECIPE_TEACHER_KEYS` count only if the run has a
    teacher (``teacher_model`` from the file, the overrides or the recipe), and are dropped
    otherwise. Every value set explicitly wins over the recipe, so the config.yaml a run
    writes loads back to the same config. With no recipe named anywhere the config keeps
    ``recipe=None`` and the names of the settings given (``settings_given``): ``deit.train.run``
    chooses the recipe from the data and applies it under them (:func:`apply_recipe`)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = load_yaml(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
        data.update(loaded or {})
    data.update(overrides or {})
    if "recipe" in data and data["recipe"] is None:  # --recipe none, recipe: null: no recipe, as it always meant
        data["recipe"] = PAPER_RECIPE
    given = frozenset(data)
    if data.get("recipe") is not None:
        data = {**_recipe_layer(data["recipe"], data), **data}
    config = config_from_dict(data, source=str(path) if path else "config")
    config.settings_given = given
    return config


# --- command-line flags generated from the dataclass --------------------------------------

def _parse_optional(base: type):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def _help_text(name: str, default: Any) -> str:
    """The ``--help`` line of a setting: its description and default (argparse %-escaped)."""
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif default is None:
        shown = "none"
    elif isinstance(default, tuple):
        shown = " ".join(str(v) for v in default)
    else:
        shown = str(default)
    return f"{HELP[name][1] if name in HELP else ''} (default: {shown})".strip().replace("%", "%%")


def add_config_arguments(parser) -> None:
    """One ``--flag`` per field (``--batch-size``, ``--no-amp`` …), in the argument groups of
    :data:`GROUPS`, each with its :data:`HELP` text, default and choices. Unset flags stay
    absent so that a YAML file's values are not overwritten by defaults. Choices are shown
    as the metavar and checked by ``TrainConfig.validate`` (one message format for flags
    and YAML)."""
    import argparse

    groups = {key: parser.add_argument_group(key, text) for key, text in GROUPS.items()}
    defaults = TrainConfig()
    group_key = "model"
    for name, annotation in field_types().items():
        if name == "extra":
            continue
        group_key = HELP[name][0] if name in HELP else group_key  # a field without help: its neighbour's group
        group = groups[group_key]
        base, optional = _unwrap_optional(annotation)
        help_text = _help_text(name, getattr(defaults, name))
        if base is bool:
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        elif typing.get_origin(base) is tuple:
            group.add_argument(flag(name), dest=name, type=float, nargs=2, metavar=("MIN", "MAX"),
                               default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(base) is list:
            group.add_argument(flag(name), dest=name, type=float, nargs="+", metavar="V",
                               default=argparse.SUPPRESS, help=help_text)
        else:
            parse = _parse_optional(base) if optional else base
            metavar = "{" + ",".join(CHOICES[name]) + "}" if name in CHOICES else _METAVARS.get(name)
            group.add_argument(flag(name), dest=name, type=parse, default=argparse.SUPPRESS, metavar=metavar,
                               help=help_text)


def overrides_from_args(args) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in FIELD_NAMES if hasattr(args, name)}
    for name in ("scale", "crops_scale"):
        if name in values:
            values[name] = tuple(values[name])
    return values


def settings_markdown() -> str:
    """Every setting as a Markdown table per ``--help`` group: flag and YAML key, default, the
    values it takes and its description, all from its field (``docs/settings.md``)."""
    defaults, types_ = TrainConfig(), field_types()
    lines = ["# Training settings", "",
             "Every `deit train` setting: the flag, the key of a `--config` YAML file (and of the `config.yaml` "
             "a run writes), the default, the values it takes and what it does. Generated from the fields of "
             "`deit.train.settings.TrainConfig` by `python scripts/settings_table.py`; a recipe "
             "(`--recipe`, `deit recipes NAME`) changes some defaults, flags and `--config` win over it.", ""]
    for group, about in GROUPS.items():
        lines += [f"## {group}: {about}", "", "| flag | YAML key | default | values | description |",
                  "|---|---|---|---|---|"]
        for item in fields(TrainConfig):
            if item.metadata.get("group") != group:
                continue
            base, optional = _unwrap_optional(types_[item.name])
            rule = item.metadata
            values = (", ".join(CHOICES[item.name]) if item.name in CHOICES else
                      "integer > 0" if rule["positive"] else
                      f"number in [{rule['within'][0]}, {rule['within'][1]}]" if rule["within"] else
                      _EXPECTED.get(base, "two numbers" if typing.get_origin(base) is tuple else "numbers"))
            if optional:
                values += ", or none"
            default = getattr(defaults, item.name)
            shown = ("on" if default else "off") if isinstance(default, bool) else \
                "none" if default is None else " ".join(map(str, default)) if isinstance(default, tuple) else default
            text = rule["help"].replace("|", "\\|")
            lines.append(f"| `{flag(item.name)}` | `{item.name}` | {shown} | {values} | {text} |")
        lines.append("")
    return "\n".join(lines)
