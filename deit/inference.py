"""Using a trained checkpoint: evaluation (``deit eval``) and prediction (``deit predict``).

A checkpoint written by ``deit train`` records the architecture, the class names and the
preprocessing (``data_config``: data set, image size, channels, mean, std), so neither
command needs to be told them again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from deit.checkpoint import CheckpointError, build_from_checkpoint


def load_for_inference(path: str | os.PathLike, *, model_name: str | None = None, use_ema: bool = False
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Model in eval mode (no teacher) and the checkpoint's metadata (classes, data_config)."""
    model, report = build_from_checkpoint(path, model_name)
    obj = report.checkpoint
    if use_ema:
        if obj.get("ema") is None:
            raise CheckpointError(f"{path} holds no EMA weights (trained with --no-model-ema?)")
        model.load_state_dict(obj["ema"])
    meta = {"classes": obj.get("classes"), "data_config": obj.get("data_config") or {}}
    return model.eval(), meta


@dataclass
class EvalReport:
    checkpoint: str
    dataset: str
    metrics: dict[str, float]
    confusion_matrix_png: Path | None = None
    json_path: Path | None = None
    heads: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.checkpoint} on {self.dataset} ({int(self.metrics['count'])} images)"]
        for head in self.heads:
            prefix = f"{head}_" if head != "fusion" and head != "model" else ""
            lines.append(f"  {head:13s} top-1 {self.metrics[prefix + 'acc1']:6.2f}%   "
                         f"top-5 {self.metrics[prefix + 'acc5']:6.2f}%")
        if self.confusion_matrix_png:
            lines.append(f"  confusion matrix: {self.confusion_matrix_png}")
        return "\n".join(lines)


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts; rows are true classes, columns predictions."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    size = max(5.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_checkpoint(path: str | os.PathLike, *, model_name: str | None = None, dataset: str | None = None,
                        data_dir: str | None = None, use_ema: bool = False, batch_size: int = 256,
                        output: str | os.PathLike | None = None) -> EvalReport:
    from deit.data import build_loader, build_transform, dataset_mean_std, load_dataset, stats_for_channels
    from deit.engine import evaluate
    from deit.models.deit import DeiT

    model, meta = load_for_inference(path, model_name=model_name, use_ema=use_ema)
    data_config = meta["data_config"]
    dataset = dataset or data_config.get("dataset")
    if not dataset:
        raise ValueError(f"{path} does not record its data set: pass --dataset")
    image_size = data_config.get("image_size") or getattr(model, "image_size", 224)
    in_channels = data_config.get("in_channels") or getattr(model, "in_channels", 3)
    if data_config.get("mean"):
        mean, std = data_config["mean"], data_config["std"]
    else:
        mean, std = dataset_mean_std(dataset, load_dataset(dataset, "train", data_dir))
        mean, std = stats_for_channels(mean, in_channels), stats_for_channels(std, in_channels)
    transform = build_transform(is_train=False, image_size=image_size, in_channels=in_channels, mean=mean, std=std)
    val_set = load_dataset(dataset, "val", data_dir, transform=transform)
    data_classes = [str(c) for c in val_set.classes]
    classes = meta["classes"] or data_classes
    num_outputs = getattr(model, "num_classes", len(classes))
    if len(data_classes) != num_outputs or [str(c) for c in classes] != data_classes:
        shown = ", ".join(data_classes[:10]) + (" …" if len(data_classes) > 10 else "")
        raise ValueError(
            f"{path} predicts {num_outputs} classes ({', '.join(map(str, classes[:10]))}"
            f"{' …' if len(classes) > 10 else ''}) but {dataset} has {len(data_classes)} ({shown}); evaluating "
            f"it there would compare unrelated labels. Fine-tune it on that data first: deit train --finetune "
            f"{path} --dataset {dataset} ...")
    loader = build_loader(val_set, batch_size=batch_size, is_train=False)
    metrics = evaluate(model, loader, device=torch.device("cpu"), collect_predictions=True)
    out_dir = Path(output) if output else Path(path).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem + ("-ema" if use_ema else "")
    matrix = confusion_matrix(metrics.pop("predictions"), metrics.pop("targets"), len(classes))
    png = plot_confusion_matrix(matrix, classes, out_dir / f"{stem}-confusion_matrix.png",
                                title=f"{Path(path).name} on {dataset}")
    json_path = out_dir / f"{stem}-eval.json"
    json_path.write_text(json.dumps({"checkpoint": str(path), "dataset": dataset, "metrics": metrics,
                                     "confusion_matrix": matrix.tolist(), "classes": classes}, indent=2))
    heads = ["cls", "dist", "fusion"] if isinstance(model, DeiT) else ["model"]
    return EvalReport(str(path), dataset, metrics, png, json_path, heads)


def resolve_preprocessing(model: nn.Module, data_config: Mapping[str, Any]) -> dict[str, Any]:
    """``image_size``, ``in_channels``, ``mean``, ``std`` for evaluating ``model``: the
    checkpoint's ``data_config`` where it has them, else the model's size and channels and
    0.5 / 0.5 (foreign weights carry no statistics). Shared by prediction and export."""
    in_channels = int(data_config.get("in_channels") or getattr(model, "in_channels", 3))
    return {"image_size": int(data_config.get("image_size") or getattr(model, "image_size", 224)),
            "in_channels": in_channels,
            "mean": list(data_config.get("mean") or [0.5] * in_channels),
            "std": list(data_config.get("std") or [0.5] * in_channels)}


class Predictor:
    """Top-k classes for image files, with the checkpoint's own preprocessing."""

    def __init__(self, model: nn.Module, classes: Sequence[str], data_config: dict[str, Any]) -> None:
        from deit.data import build_transform

        self.model = model.eval()
        self.classes = list(classes)
        preprocessing = resolve_preprocessing(model, data_config)
        self.in_channels = preprocessing["in_channels"]
        self.transform = build_transform(is_train=False, **preprocessing)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, use_ema: bool = False) -> "Predictor":
        model, meta = load_for_inference(path, use_ema=use_ema)
        classes = meta["classes"] or [str(i) for i in range(model.num_classes)]
        return cls(model, classes, meta["data_config"])

    @torch.inference_mode()
    def predict_files(self, paths: Sequence[str | os.PathLike], topk: int = 5) -> list[dict[str, Any]]:
        from deit.data import load_image

        if topk <= 0:
            raise ValueError(f"topk={topk} is invalid; expected a positive integer")
        batch = torch.stack([self.transform(load_image(p, self.in_channels)) for p in paths])  # (B, C, H, W)
        logits = self.model.student_model(batch) if hasattr(self.model, "student_model") else self.model(batch)
        probabilities = logits.float().softmax(dim=-1)  # (B, K)
        k = min(topk, probabilities.shape[1])
        top = probabilities.topk(k, dim=-1)
        return [{"image": str(p),
                 "top": [{"class": self.classes[i], "index": int(i), "probability": float(v)}
                         for v, i in zip(top.values[n].tolist(), top.indices[n].tolist())]}
                for n, p in enumerate(paths)]
