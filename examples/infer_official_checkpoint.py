"""Inference with an official DeiT checkpoint through the Python API.

What it shows:

1. ``deit.convert_checkpoint`` reads a checkpoint of the official DeiT release
   (facebookresearch/deit: a ``.pth`` holding ``{"model": state_dict}`` in timm's layout),
   a plain timm state dict or an HF transformers DeiT file, and writes it in this
   library's format, recording the architecture;
2. ``deit.deploy.predict.load_for_inference`` rebuilds the model from the converted file alone
   (no architecture to repeat), in eval mode;
3. ``deit.deploy.predict.Predictor.from_checkpoint`` prints the top-5 ImageNet classes of each
   image. The converted file carries no preprocessing of its own, so the variant's published
   configuration applies (``deit.get_pretrained_cfg``: ImageNet mean/std, bicubic resize to
   size / crop_pct, centre crop — crop_pct 0.9 for DeiT-Ti⚗, as timm's ``_cfg``), and the
   class names and synset ids come from timm's bundled ImageNet metadata;
4. the reference check: timm's model of the same name, loaded with the ORIGINAL file, must
   give the same logits as ours on the same input (class head, distillation head and their
   fusion). The maximum absolute difference is printed; above ``--tolerance`` the script
   exits with status 1. This is the point of loading official weights: ours computes
   exactly what the released model computes.

Run it with a downloaded official checkpoint (nothing is ever downloaded by this script)::

    python examples/infer_official_checkpoint.py \\
        --checkpoint deit_tiny_distilled_patch16_224-b40b3cf7.pth \\
        --model deit_tiny_distilled_patch16_224 cat.jpg dog.png

or, on a machine without the file, let it make a stand-in "official" checkpoint first
(timm's model of the same architecture with random weights, saved as ``{"model": state_dict}``
exactly like the release) and two synthetic images, then run the same path::

    python examples/infer_official_checkpoint.py --demo-random-weights --output runs/examples/official

With random weights the predicted classes are of course meaningless; the logits check is not.
The defaults (DeiT-Ti⚗, two images) run in a few seconds on a laptop CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import deit
from deit.data import load_image
from deit.deploy.predict import Predictor, load_for_inference
from deit.weights.layouts import extract_state_dict, read_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="image files to classify (with --demo-random-weights: optional, two "
                                             "synthetic images are written)")
    p.add_argument("--checkpoint", help="official DeiT .pth ({'model': state_dict}), timm state dict, or HF "
                                        "transformers DeiT file (.bin / .safetensors)")
    p.add_argument("--model", default=None,
                   help="registered (timm) name of the architecture, see deit.list_models(); default: inferred from "
                        "the tensor shapes (with --demo-random-weights: deit_tiny_distilled_patch16_224)")
    p.add_argument("--output", default="runs/examples/official",
                   help="directory for the converted weights (and the demo files) (default: %(default)s)")
    p.add_argument("--format", choices=("safetensors", "pth"), default="safetensors",
                   help="format of the converted file (default: %(default)s)")
    p.add_argument("--demo-random-weights", action="store_true",
                   help="first write a stand-in official checkpoint (timm's model, random weights) and demo images")
    p.add_argument("--topk", type=int, default=5, help="classes printed per image (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |ours - timm| logit difference (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.demo_random_weights and args.model is None:
        args.model = "deit_tiny_distilled_patch16_224"
    if not args.demo_random_weights:
        if not args.checkpoint:
            p.error("--checkpoint is required (or pass --demo-random-weights)")
        if not args.images:
            p.error("give at least one image file (or pass --demo-random-weights)")
    return args


# --- the stand-in "official" checkpoint ----------------------------------------------------

def write_standin_checkpoint(model_name: str, directory: Path, seed: int) -> Path:
    """timm's model of the same architecture, saved as the official release does.

    timm's init leaves LayerNorm weights at 1 and biases at 0; a little noise on every
    parameter makes sure the logits check exercises every single weight.
    """
    import timm

    torch.manual_seed(seed)
    reference = timm.create_model(model_name, pretrained=False)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model_name}-standin.pth"
    torch.save({"model": reference.state_dict()}, path)  # the official files' container
    return path


def write_demo_images(directory: Path, seed: int) -> list[Path]:
    """Two synthetic RGB pictures of different sizes (the Predictor resizes them)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(((320, 240), (200, 260))):
        y, x = np.mgrid[0:height, 0:width]
        image = np.stack([255 * x / width, 255 * y / height, 128 + 127 * np.sin(x / 9.0 + index)], axis=-1)
        image[(x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2] = (230, 40, 40)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        path = directory / f"demo-{index}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# --- the reference check ---------------------------------------------------------------------

def timm_reference(model_name: str, checkpoint: Path, num_classes: int) -> torch.nn.Module | None:
    """timm's model loaded with the ORIGINAL file, or None when the file is not in timm's
    layout (HF transformers files: compare with transformers instead)."""
    import timm

    obj, metadata = read_checkpoint(checkpoint)  # safe: weights-only
    state_dict, _ = extract_state_dict(obj, metadata, source=str(checkpoint))
    reference = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if set(state_dict) != set(reference.state_dict()):
        return None
    reference.load_state_dict(state_dict)
    return reference.eval()


@torch.no_grad()
def compare_with_timm(model: torch.nn.Module, reference: torch.nn.Module, batch: torch.Tensor
                      ) -> dict[str, float]:
    """Max |ours - timm| per output: class head, distillation head and fusion (DeiT), or logits."""
    if isinstance(model, deit.DeiT):
        cls_ours, dist_ours = model.forward_heads(model.forward_features(batch))
        feats = reference.forward_features(batch)  # (B, N+2, D), final norm applied
        cls_ref, dist_ref = reference.head(feats[:, 0]), reference.head_dist(feats[:, 1])
        pairs = {"cls head": (cls_ours, cls_ref), "dist head": (dist_ours, dist_ref),
                 "fusion": (model.student_model(batch), reference(batch))}
    else:
        pairs = {"logits": (model(batch), reference(batch))}
    return {name: (ours - ref).abs().max().item() for name, (ours, ref) in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    images = [Path(p) for p in args.images]
    if args.demo_random_weights:
        if checkpoint is None:
            checkpoint = write_standin_checkpoint(args.model, output / "official", args.seed)
            print(f"wrote stand-in official checkpoint {checkpoint} (timm {args.model}, random weights)")
        if not images:
            images = write_demo_images(output / "images", args.seed)
            print(f"wrote demo images {', '.join(map(str, images))}")

    # 1. convert to this library's format (the file records the architecture; without a
    #    name it is inferred by matching the tensor shapes against the registry)
    converted = output / f"{args.model or checkpoint.stem}.{args.format}"
    converted, name = deit.convert_checkpoint(checkpoint, converted, model_name=args.model)
    print(f"converted {checkpoint} -> {converted} ({name})")

    # 2. rebuild from the converted file alone
    model, _ = load_for_inference(converted)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {type(model).__name__} {model.model_name}: {n_params / 1e6:.2f}M parameters, "
          f"{model.image_size} px, {model.num_classes} classes")

    # 3. top-k with the variant's published preprocessing and ImageNet class names
    predictor = Predictor.from_checkpoint(converted)
    for result in predictor.predict_files(images, topk=args.topk):
        print(f"{result['image']}:")
        for rank, top in enumerate(result["top"], 1):
            print(f"  {rank}. {top['class']:<28s} (class {top['index']:4d})  p={top['probability']:.4f}")

    # 4. same logits as timm's model loaded with the original file
    reference = timm_reference(name, checkpoint, model.num_classes)
    if reference is None:
        print(f"logits check skipped: {checkpoint} is not in timm's layout (an HF transformers file?)")
        return 0
    batch = torch.stack([predictor.transform(load_image(p, model.in_channels)) for p in images])  # (B, 3, H, W)
    diffs = compare_with_timm(model, reference, batch)
    worst = max(diffs.values())
    per_head = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    verdict = "OK" if worst < args.tolerance else "MISMATCH"
    print(f"logits vs timm {name} on {tuple(batch.shape)}: max abs difference {worst:.2e} ({per_head}) "
          f"-> {verdict} (tolerance {args.tolerance:g})")
    return 0 if worst < args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
