"""Using a trained checkpoint: evaluation (``deit eval``) and prediction (``deit predict``).

A checkpoint written by ``deit train`` records the architecture, the class names and the
preprocessing (``data_config``: data set, image size, channels, mean, std, crop_pct,
interpolation), so neither command needs to be told them again; a foreign file (official
release, timm, HF folder) predicts with its variant's published preprocessing and label
names (:mod:`deit.deploy.preprocessing`).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.figures import new_figure
from deit.core.fileio import atomic_write, write_text_atomic
from deit.data import CorruptDatasetError, build_loader, build_transform, dataset_mean_std, load_dataset, load_image
from deit.data.datasets import BUILTIN_DATASETS
from deit.data.decode import decoded_batches
from deit.data.loader import collate_readable
from deit.deploy.preprocessing import resolve_labels, resolve_preprocessing, variant_config
from deit.train.engine import evaluate
from deit.weights.factory import build_from_checkpoint
from deit.weights.layouts import CheckpointError

__all__ = ["EvalReport", "IMAGE_EXTENSIONS", "Predictor", "evaluate_checkpoint", "find_images", "load_for_inference",
           "recorded_dataset", "resolve_preprocessing"]


def load_for_inference(path: str | os.PathLike, *, model_name: str | None = None, use_ema: bool = False
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Model in eval mode (no teacher) and the checkpoint's metadata: ``classes``,
    ``class_ids`` and ``data_config`` recorded by ``deit train`` / ``save_model``, or read from
    an HF folder's ``id2label`` and ``preprocessor_config.json``; empty where the file says
    nothing."""
    model, report = build_from_checkpoint(path, model_name)
    obj = report.checkpoint
    if use_ema:
        if obj.get("ema") is None:
            raise CheckpointError(f"{path} holds no EMA weights (trained with --no-model-ema?); drop --ema")
        model.load_state_dict(obj["ema"])
    info = report.info  # this library's fields, or what an HF folder's configs say
    meta = {"classes": info.get("classes") or obj.get("classes"),
            "class_ids": info.get("class_ids") or obj.get("class_ids"),
            "data_config": dict(info.get("data_config") or obj.get("data_config") or {})}
    return model.eval(), meta


SKIPPED_SHOWN = 5
"""Unreadable files :meth:`EvalReport.format` names; the JSON report lists them all."""


@dataclass
class EvalReport:
    """What ``deit eval`` measured: ``metrics`` (``count`` images evaluated, ``skipped``
    unreadable files left out, accuracies per head) and ``skipped``, those files' paths
    relative to the data set's folder."""

    checkpoint: str
    dataset: str
    metrics: dict[str, float]
    confusion_matrix_png: Path | None = None
    json_path: Path | None = None
    heads: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.checkpoint} on {self.dataset} ({self.counted()})"]
        for head in self.heads:
            prefix = f"{head}_" if head != "fusion" and head != "model" else ""
            lines.append(f"  {head:13s} top-1 {self.metrics[prefix + 'acc1']:6.2f}%   "
                         f"top-5 {self.metrics[prefix + 'acc5']:6.2f}%")
        if self.confusion_matrix_png:
            lines.append(f"  confusion matrix: {self.confusion_matrix_png}")
        return "\n".join(lines)

    def counted(self) -> str:
        """``N images``, and the unreadable files left out of them, the first few by name."""
        text = f"{int(self.metrics['count'])} images"
        if self.skipped:
            shown = ", ".join(self.skipped[:SKIPPED_SHOWN]) + (", …" if len(self.skipped) > SKIPPED_SHOWN else "")
            text += f"; {len(self.skipped)} unreadable file(s) skipped, not counted: {shown}"
        return text


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts; rows are true classes, columns predictions."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    k = len(classes)
    size = max(5.0, 0.45 * k + 2)
    fig = new_figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix.numpy(), cmap="Blues")
    if k <= 40:
        ax.set_xticks(range(k), labels=classes, rotation=60, ha="right")
        ax.set_yticks(range(k), labels=classes)
        threshold = matrix.max().item() / 2
        for i in range(k):
            for j in range(k):
                value = int(matrix[i, j])
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def recorded_dataset(checkpoint: str | os.PathLike, data_config: Mapping[str, Any]) -> str:
    """The data set ``checkpoint`` was trained on, as its ``data_config`` records it: the image
    folder's absolute path (``dataset_path``, resolved when it trained), else the built-in name or
    the path given to ``deit train`` (``dataset``; a relative path then resolves against the
    current directory, as for a checkpoint written before runs recorded the absolute path).
    Raises :class:`ConfigError` naming the checkpoint's record and ``--dataset`` when it records
    none, or a folder that does not exist here."""
    name, folder = data_config.get("dataset"), data_config.get("dataset_path")
    if folder:
        if os.path.isdir(folder):
            return folder
        raise ConfigError(f"{checkpoint} records its data set as the image folder {folder} (given to deit train as "
                          f"{name!r}), which does not exist here; pass --dataset PATH, the folder holding train/ and "
                          "val/, to evaluate it there")
    if not name:
        raise ConfigError(f"{checkpoint} does not record its data set: pass --dataset")
    if name in BUILTIN_DATASETS or os.path.isdir(name):
        return name
    raise ConfigError(f"{checkpoint} records its data set as {name!r}, as given to deit train, which is no built-in "
                      f"data set and no folder under the current directory {os.getcwd()} (the checkpoint keeps no "
                      "absolute path for it); run deit eval from the directory it was trained in, or pass --dataset "
                      "PATH, the folder holding train/ and val/")


def evaluate_checkpoint(path: str | os.PathLike, *, model_name: str | None = None, dataset: str | None = None,
                        data_dir: str | None = None, use_ema: bool = False, batch_size: int = 256,
                        output: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                        bad_images: str = "fail") -> EvalReport:
    """``deit eval``: top-1/top-5 per head on the validation split, a confusion matrix PNG
    and a JSON report. The images are preprocessed by :func:`resolve_preprocessing`; for a
    file that records nothing and is no published variant, with the data set's own
    statistics (what ``deit train`` would record for it). ``bad_images`` is the image-folder
    policy of ``deit train`` (``fail`` or ``skip``); with ``skip`` an unreadable file counts for
    nothing (neither it nor a substitute is evaluated) and the report names it."""

    model, meta = load_for_inference(path, model_name=model_name, use_ema=use_ema)
    data_config = meta["data_config"]
    dataset = dataset or recorded_dataset(path, data_config)
    fallback, fallback_name = None, "timm's defaults"
    if not data_config.get("mean") and variant_config(model) is None and not (overrides or {}).get("mean"):
        mean, std = dataset_mean_std(dataset, load_dataset(dataset, "train", data_dir, bad_images=bad_images))
        fallback = {"mean": mean, "std": std, "crop_pct": 1.0}
        fallback_name = f"the statistics of {dataset} (as deit train records them)"
    preprocessing = resolve_preprocessing(model, data_config, overrides, source=str(path), fallback=fallback,
                                          fallback_name=fallback_name)
    transform = build_transform(is_train=False, **preprocessing)
    val_set = load_dataset(dataset, "val", data_dir, transform=transform, bad_images=bad_images, fill_skipped=False)
    data_classes = [str(c) for c in val_set.classes]
    classes = meta["classes"] or data_classes
    num_outputs = getattr(model, "num_classes", len(classes))
    if len(data_classes) != num_outputs or [str(c) for c in classes] != data_classes:
        shown = ", ".join(data_classes[:10]) + (" …" if len(data_classes) > 10 else "")
        raise ConfigError(
            f"{path} predicts {num_outputs} classes ({', '.join(map(str, classes[:10]))}"
            f"{' …' if len(classes) > 10 else ''}) but {dataset} has {len(data_classes)} ({shown}); evaluating "
            f"it there would compare unrelated labels. Fine-tune it on that data first: deit train --finetune "
            f"{path} --dataset {dataset} ...")

    metrics, skipped = _evaluate_readable(model, val_set, batch_size)
    skipped = [os.path.relpath(p, dataset) for p in skipped]
    out_dir = Path(output) if output else Path(path).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem + ("-ema" if use_ema else "")
    matrix = confusion_matrix(metrics.pop("predictions"), metrics.pop("targets"), len(classes))
    png = plot_confusion_matrix(matrix, classes, out_dir / f"{stem}-confusion_matrix.png",
                                title=f"{Path(path).name} on {dataset}")
    json_path = out_dir / f"{stem}-eval.json"
    write_text_atomic(json_path, json.dumps({"checkpoint": str(path), "dataset": dataset, "metrics": metrics,
                                            "skipped_files": skipped, "confusion_matrix": matrix.tolist(),
                                            "classes": classes}, indent=2))
    # a DeiT whose return_logits_type picks one head (a plain HF DeiT) reports that head as its output
    heads = (["cls", "dist", "fusion" if model.return_logits_type == "fusion" else "model"]
             if "cls_acc1" in metrics else ["model"])
    return EvalReport(str(path), dataset, metrics, png, json_path, heads, skipped)


def _evaluate_readable(model: nn.Module, val_set, batch_size: int) -> tuple[dict[str, Any], list[str]]:
    """:func:`~deit.train.engine.evaluate` over the readable files of ``val_set`` (loaded with
    ``fill_skipped=False``: an unreadable file skipped gives no sample), with ``predictions`` /
    ``targets``, and ``skipped``, the count of files left out; and their paths."""
    loader = build_loader(val_set, batch_size=batch_size, is_train=False, collate_fn=collate_readable)
    batches = (batch for batch in loader if batch is not None)  # None: a batch of unreadable files only
    try:
        metrics = evaluate(model, batches, device=torch.device("cpu"), collect_predictions=True)
    except CorruptDatasetError as err:  # the data layer's hint names the training command's flag
        message = str(err).replace("train with --bad-images skip", "evaluate with deit eval --bad-images skip")
        raise CorruptDatasetError(message if "deit eval --bad-images" in message
                                  else f"{message} (deit eval --bad-images skip skips unreadable files)") from None
    skipped = list(getattr(val_set, "skipped_paths", ()))
    if skipped and not metrics["count"]:
        raise CorruptDatasetError(f"image folder {val_set.root}: none of its {len(skipped)} files can be read as an "
                                  "image (all skipped by --bad-images skip)")
    metrics["skipped"] = len(skipped)
    return metrics, skipped


IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def find_images(items: Sequence[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """Expand command-line ``items`` into ``(path, error)`` pairs in the order given: a file
    is taken as it is, a folder gives its image files (:data:`IMAGE_EXTENSIONS`, searched
    recursively, sorted), a glob (``*``, ``?``, ``[``; ``**`` recursive) the files it
    matches. ``error`` is ``None``, or why the item gave no image."""
    found: list[tuple[str, str | None]] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            files = _images_under(item)
            found += [(f, None) for f in files] or [(item, f"{item} is a folder without image files "
                                                            f"({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")]
        elif os.path.exists(item):
            found.append((item, None))
        elif any(c in item for c in "*?["):  # a glob pattern
            matches = sorted(glob.glob(item, recursive=True))
            files = [f for m in matches for f in (_images_under(m) if os.path.isdir(m) else [m])]
            found += [(f, None) for f in files] or [(item, f"no image file matches {item}")]
        else:
            found.append((item, f"image file not found: {item}"))
    return found


def _images_under(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class Predictor:
    """Top-k classes for image files, with the preprocessing and class names of
    :mod:`deit.deploy.preprocessing` (the checkpoint's own, else its variant's published ones).

    Args:
        model: the classifier (a DeiT predicts with its ``return_logits_type`` head).
        classes: the checkpoint's class names, or ``None`` to take the variant's labels.
        data_config: the checkpoint's preprocessing record (possibly empty).
        overrides: user settings (``mean``, ``std``, ``crop_pct``, ``interpolation``).
        source: the file's name, for the warning when no preprocessing is known.
        class_ids: ids beside ``classes`` (e.g. WordNet synsets), where the file has them.
        compile: run the model through ``torch.compile`` (``deit predict --compile``).
    """

    def __init__(self, model: nn.Module, classes: Sequence[str] | None = None,
                 data_config: Mapping[str, Any] | None = None, *, overrides: Mapping[str, Any] | None = None,
                 source: str = "the weights", class_ids: Sequence[str] | None = None,
                 compile: bool = False) -> None:
        self.model = model.eval()
        self.forward = torch.compile(self._logits) if compile else self._logits
        self.classes, self.class_ids = resolve_labels(model, classes, class_ids)
        self.preprocessing = resolve_preprocessing(model, data_config, overrides, source=source)
        self.in_channels = self.preprocessing["in_channels"]
        self.transform = build_transform(is_train=False, **self.preprocessing)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, use_ema: bool = False, model_name: str | None = None,
                        overrides: Mapping[str, Any] | None = None, compile: bool = False) -> "Predictor":
        model, meta = load_for_inference(path, model_name=model_name, use_ema=use_ema)
        return cls(model, meta["classes"], meta["data_config"], overrides=overrides, source=str(path),
                   class_ids=meta["class_ids"], compile=compile)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's prediction logits (B, K): a DeiT's own eval output."""
        return self.model.student_model(batch) if hasattr(self.model, "student_model") else self.model(batch)

    def _entry(self, index: int, probability: float) -> dict[str, Any]:
        entry: dict[str, Any] = {"class": self.classes[index]}
        if self.class_ids[index] is not None:
            entry["id"] = self.class_ids[index]
        entry.update(index=int(index), probability=float(probability))
        return entry

    @torch.inference_mode()
    def predict_files(self, paths: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 32
                      ) -> list[dict[str, Any]]:
        """One result per path, in order: ``{"image", "top": [{"class", "id"?, "index",
        "probability"}, ...]}``, or ``{"image", "error"}`` for a file that cannot be read (the
        others are still predicted). Images are decoded and run ``batch_size`` at a time."""

        if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
            raise ConfigError(f"topk={topk!r} is invalid; expected a positive integer (--topk)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size!r} is invalid; expected a positive integer (--batch-size)")
        results: list[dict[str, Any]] = []
        decode = lambda path: self.transform(load_image(path, self.in_channels))  # noqa: E731  (C, H, W)
        for entries, tensors in decoded_batches(paths, decode, batch_size):
            results.extend(entries)
            good = [entry for entry in entries if "error" not in entry]
            if not tensors:
                continue
            batch = torch.stack(tensors)  # (B, C, H, W)
            logits = self.forward(batch)  # (B, K)
            probabilities = logits.float().softmax(dim=-1)  # (B, K)
            top = probabilities.topk(min(topk, probabilities.shape[1]), dim=-1)
            for item, values, indices in zip(good, top.values.tolist(), top.indices.tolist()):
                item["top"] = [self._entry(i, v) for v, i in zip(values, indices)]
        return results
