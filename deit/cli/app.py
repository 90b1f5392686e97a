"""The ``deit`` command line: one entry point for every task of the library.

``demo`` (the README's main job), ``train`` (also under torchrun), ``recipes``, ``eval``,
``predict``, ``benchmark``, ``list-models``, ``info`` and ``convert``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from deit.core.errors import ConfigError, DeitError
from deit.models.deit import DeiT
from deit.models.flops import count_flops
from deit.models.pretrained import INTERPOLATIONS
from deit.models.registry import list_models
from deit.train.settings import (
    BAD_IMAGE_POLICIES,
    add_config_arguments,
    describe_recipe,
    load_config,
    overrides_from_args,
    recipe_names,
    recipe_summary,
)
from deit.weights.factory import build_from_checkpoint, convert_checkpoint, create_model
from deit.weights.layouts import save_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _format_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def model_zoo_row(name: str) -> dict[str, object]:
    """Parameters (1000 classes), default input size and forward GFLOPs per image of a
    registered model, counted on the meta device (shapes only: no memory, no time)."""
    with torch.device("meta"):
        model = create_model(name).eval()
        size = getattr(model, "image_size", None) or (32 if name.endswith("_32") else 224)
        x = torch.empty(1, getattr(model, "in_channels", 3), size, size)  # (1, C, H, W)
    with torch.no_grad():
        flops = count_flops(lambda: model(x))
    return {"name": name, "family": type(model).__name__, "params": count_parameters(model), "image_size": size,
            "gflops": flops / 1e9}


def cmd_list_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    if args.markdown:
        print("| name | class | params (1000 classes) | input | GFLOPs / image | GMACs (the paper's \"FLOPs\") |")
        print("|---|---|---|---|---|---|")
        for name in names:
            row = model_zoo_row(name)
            print(f"| `{name}` | {row['family']} | {_format_params(row['params'])} | {row['image_size']} | "
                  f"{row['gflops']:.3g} | {row['gflops'] / 2:.3g} |")
        return 0
    for name in names:
        if args.flops:
            row = model_zoo_row(name)
            print(f"{name:40s} {_format_params(row['params']):>9s} {row['gflops']:9.3g} GFLOPs @ "
                  f"{row['image_size']} px")
        elif args.params:
            with torch.device("meta"):
                print(f"{name:40s} {_format_params(count_parameters(create_model(name))):>9s}")
        else:
            print(name)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if Path(args.model).is_dir() or Path(args.model).suffix in (".pth", ".pt", ".safetensors", ".bin"):
        model, report = build_from_checkpoint(args.model)  # a file, or an HF save_pretrained folder
        print(f"checkpoint: {args.model}")
        for note in report.notes:
            print(f"  note: {note}")
        classes = report.info.get("classes") or []
        if classes:
            print(f"classes: {len(classes)} ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})")
        if report.info.get("data_config"):
            print("preprocessing: " + ", ".join(f"{k}={v}" for k, v in report.info["data_config"].items()))
    else:
        with torch.device("meta"):
            model = create_model(args.model)
    print(f"model: {getattr(model, 'model_name', type(model).__name__)} ({type(model).__name__})")
    print(f"parameters: {count_parameters(model):,}")
    for key, value in getattr(model, "config", {}).items():
        print(f"  {key} = {value!r}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    overrides = {}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    dst, name = convert_checkpoint(args.src, args.dst, model_name=args.model, **overrides)
    print(f"wrote {dst} ({name})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job (``deit demo``), or with ``--smoke`` a seconds-long tour of the models."""
    if not args.smoke:
        from deit.cli.demo import run_demo

        run_demo(output=args.output, full=args.full, data_dir=args.data_dir, progress=not args.no_progress)
        return 0
    return smoke_demo(args)


def smoke_demo(args: argparse.Namespace) -> int:
    """Build a ConvNeXt teacher and a distilled DeiT student, save and reload the
    teacher by name, run a forward pass and print what happened."""
    torch.manual_seed(args.seed)
    out_dir = Path(args.output or "runs/smoke")
    out_dir.mkdir(parents=True, exist_ok=True)
    image_size, num_classes = args.image_size, args.num_classes

    teacher = create_model("convnext_atto_32", num_classes=num_classes)
    teacher_path = save_model(teacher, out_dir / "convnext_atto_32.safetensors")
    student = create_model("deit_tiny_distilled_patch4_32", num_classes=num_classes, image_size=image_size,
                           teacher_model_name="ConvNeXt", checkpoint_dir=out_dir)
    x = torch.randn(args.batch_size, 3, image_size, image_size)

    print(f"deit demo: random weights, {args.batch_size} images of {image_size}x{image_size}, "
          f"{num_classes} classes")
    print(f"  teacher  {student.teacher.teacher_name:32s} {_format_params(count_parameters(student.teacher)):>8s}"
          f"  (loaded by name from {teacher_path})")
    print(f"  student  {student.model_name:32s} {_format_params(count_parameters(student)):>8s}"
          f"  (teacher not among its parameters or state_dict: "
          f"{not any(k.startswith('teacher') for k in student.state_dict())})")
    student.train()
    (cls_logits, dist_logits), teacher_logits = student(x)
    print(f"  train mode: cls {tuple(cls_logits.shape)}, dist {tuple(dist_logits.shape)}, "
          f"teacher {tuple(teacher_logits.shape)} (requires_grad={teacher_logits.requires_grad})")
    student.eval()
    with torch.inference_mode():
        for kind in ("classification", "distillation", "fusion"):
            student.return_logits_type = kind
            start = time.perf_counter()
            out, _ = student(x)
            elapsed = time.perf_counter() - start
            print(f"  eval {kind:14s} -> {tuple(out.shape)}  {args.batch_size / elapsed:8.1f} images/s "
                  "(student + teacher)")
    print("\nregistered models:")
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        kind = "DeiT (distilled)" if isinstance(model, DeiT) else type(model).__name__
        print(f"  {name:36s} {_format_params(count_parameters(model)):>8s}  {kind}")
    print(f"\nartifacts in {out_dir.resolve()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from deit.train import distributed
    from deit.train.run import train

    config = load_config(args.config, overrides_from_args(args))
    result = train(config)
    final = result.final
    if final and distributed.detect().is_main and "val_acc1" in final:
        heads = "".join(f", {h} {final[f'val_{h}_acc1']:.2f}%" for h in ("cls", "dist") if f"val_{h}_acc1" in final)
        print(f"done: {result.epochs_run} epoch(s) in {result.wall_time_s:.0f} s, val top-1 {final['val_acc1']:.2f}%"
              f"{heads} (best {result.best_acc1:.2f}%), {result.train_images_per_s:.0f} train images/s; "
              f"run directory {result.output}")
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from deit.train import distributed
    from deit.train.cache_fill import fill_teacher_cache

    config = load_config(args.config, overrides_from_args(args))
    epochs = None  # every epoch of the run's plan: --epochs, or the epochs its --budget-images takes
    if args.epoch_range is not None:
        first, last = args.epoch_range
        if not 0 <= first < last:
            raise ConfigError(f"--epoch-range {first} {last} is invalid; expected FIRST LAST with 0 <= FIRST < LAST "
                              "(epochs FIRST .. LAST-1)")
        epochs = range(first, last)
    counts = fill_teacher_cache(config, epochs, world_size=args.world_size)
    first, last = counts["epochs"]
    if distributed.detect().is_main:
        print(f"teacher cache {config.teacher_cache}: epochs {first}..{last - 1}, {counts['misses']} outputs "
              f"computed, {counts['hits']} already stored, {counts['epochs_skipped']} complete epoch share(s) "
              f"skipped, {counts['wall_time_s']:.0f} s")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(describe_recipe(args.name), end="")
        return 0
    for name in recipe_names():
        print(f"{name:12s} {recipe_summary(name)}")
    print(f"{'(not given)':12s} deit train chooses by the data: small-data for small data sets of small images, "
          "else paper (deit train --help, --recipe)")
    return 0


def add_preprocessing_arguments(p: argparse.ArgumentParser) -> None:
    """--mean/--std/--crop-pct/--interpolation: preprocessing of a file that records none."""
    g = p.add_argument_group("preprocessing (default: the checkpoint's own, else its variant's published one)")
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="per-channel mean in [0, 1] (1 or 3 values; end the list with -- before image paths)")
    g.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std in [0, 1] (1 or 3 values)")
    g.add_argument("--crop-pct", type=float, help="centre-crop fraction: the shorter side is resized to "
                                                  "image_size / crop_pct, then cropped (timm's DeiT configurations: "
                                                  "0.9 at 224, 1.0 at 384; the official main.py evaluates with 0.875)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS,
                   help="resize filter")


def preprocessing_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {"mean": args.mean, "std": args.std, "crop_pct": args.crop_pct, "interpolation": args.interpolation}


def cmd_eval(args: argparse.Namespace) -> int:
    from deit.deploy.predict import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, model_name=args.model, dataset=args.dataset,
                                 data_dir=args.data_dir, use_ema=args.ema, batch_size=args.batch_size,
                                 output=args.output, overrides=preprocessing_overrides(args),
                                 bad_images=args.bad_images)
    print(report.format())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from deit.deploy.predict import Predictor, find_images

    if args.checkpoint_dir is not None and not args.pretrained:
        raise ConfigError("--checkpoint-dir is where --pretrained looks for published weights: add --pretrained, or "
                          "give the file itself with --checkpoint FILE")
    if args.pretrained:  # the variant's published weights: local folder, cache, else download
        if args.model is None or args.onnx is not None:
            raise ConfigError("--pretrained takes the weights of --model NAME (a registered name; see deit "
                              "list-models) and does not combine with --onnx")
        from deit.weights.hub import resolve_pretrained_file

        args.checkpoint = str(resolve_pretrained_file(args.model, checkpoint=args.checkpoint,
                                                      checkpoint_dir=args.checkpoint_dir))
    if (args.checkpoint is None) == (args.onnx is None):
        raise ConfigError("give exactly one of --checkpoint CKPT (PyTorch) or --onnx MODEL.onnx (onnxruntime)")
    if args.quantize is not None and args.onnx is not None:
        raise ConfigError("--quantize int8 quantises a --checkpoint; an --onnx file is run as it is (write an int8 one "
                          "with deit export --quantize int8)")
    if args.compile and (args.onnx is not None or args.quantize is not None):
        raise ConfigError("--compile applies to the PyTorch model of --checkpoint, not to ONNX Runtime "
                          "(--onnx / --quantize)")
    if args.quantize is not None:
        from deit.deploy.export import int8_predictor

        predictor = int8_predictor(args.checkpoint, use_ema=args.ema, model_name=args.model,
                                        overrides=preprocessing_overrides(args))
    elif args.onnx is not None:
        from deit.deploy.onnx_predict import OnnxPredictor

        if any(v is not None for v in preprocessing_overrides(args).values()):
            raise ConfigError("--mean/--std/--crop-pct/--interpolation apply to --checkpoint; an --onnx file "
                              "carries its preprocessing (set them at deit export)")
        predictor = OnnxPredictor(args.onnx)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, use_ema=args.ema, model_name=args.model,
                                              overrides=preprocessing_overrides(args), compile=args.compile)
    found = find_images(args.images)
    readable = predictor.predict_files([path for path, error in found if error is None], topk=args.topk,
                                       batch_size=args.batch_size)
    predicted = iter(readable)
    results = [next(predicted) if error is None else {"image": path, "error": error} for path, error in found]
    for item in results:
        if "error" in item:
            print(f"deit predict: error: {item['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            if "top" in item:
                ranked = "; ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in item["top"])
                print(f"{item['image']}: {ranked}")
    return 1 if any("error" in item for item in results) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from deit.deploy.export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.output, head=args.head, fmt=args.format, use_ema=args.ema,
                               opset=args.opset, atol=args.atol, data_dir=args.data_dir, verify=not args.no_verify,
                               overrides=preprocessing_overrides(args), quantize=args.quantize)
    meta = report["metadata"]
    print(f"wrote {report['path']}: {meta['model_name']}, input images (batch, {meta['in_channels']}, "
          f"{meta['image_size']}, {meta['image_size']}), outputs {', '.join(meta['outputs'])}, "
          f"{len(meta['classes'])} classes")
    for inputs, errors in report["max_abs_diff"].items():
        shown = ", ".join(f"{name} {err:.2e}" for name, err in errors.items() if not name.endswith("_agreement"))
        agreement = ", ".join(f"{name[:-len('_top1_agreement')]} {100 * v:.1f}%" for name, v in errors.items()
                              if name.endswith("_agreement"))
        print(f"  verified on {inputs} images: max |exported - PyTorch| {shown} (bound {report['atol']:g})"
              + (f"; top-1 equal to PyTorch's: {agreement}" if agreement else ""))
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from deit.explain.attention import format_similarity, visualize

    output = args.output or str(Path(args.checkpoint).parent / "visualize")
    for image in args.images:
        report = visualize(args.checkpoint, image, output, per_layer=args.per_layer, head_fusion=args.head_fusion,
                           discard_ratio=args.discard_ratio, model_name=args.model, use_ema=args.ema)
        print(report.format())
        if report.similarity:
            print(format_similarity(report.similarity))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from datetime import datetime

    from deit.bench.harness import TASKS, BenchmarkConfig, run_benchmark, write_json

    def names(text: str | None) -> tuple[str, ...] | None:
        return tuple(t for t in text.split(",") if t) if text else None

    cfg = BenchmarkConfig(inference_batch=args.batch_size, train_batch=args.train_batch_size,
                          modes=names(args.modes), tasks=names(args.tasks) or TASKS,
                          deploy_compile=not args.no_compile,
                          peers=names(args.peers) or ("timm", "hf"), repeats=args.repeats, warmup=args.warmup,
                          device=args.device, threads=args.threads)
    if args.model:
        cfg.inference_model = args.model
    if args.train_model:
        cfg.train_model = args.train_model
    if args.teacher:
        cfg.teacher = args.teacher
    if args.distill_teacher:
        cfg.distill_teacher = args.distill_teacher
    report = run_benchmark(cfg, log=lambda line: print(line, flush=True))
    print(report.format_table())
    out = Path(args.json or Path("benchmarks") / "results" / f"benchmark-{datetime.now():%Y%m%d-%H%M%S}.json")
    print(f"JSON: {write_json(report, out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deit", description="Data-efficient Image Transformers (DeiT)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log checkpoint adaptations and progress")
    parser.add_argument("--debug", action="store_true", default=os.environ.get("DEIT_DEBUG", "") not in ("", "0"),
                        help="show the full traceback of an error instead of its one-line message "
                             "(also DEIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: train a CNN teacher, a distilled DeiT and a control on "
                                    "Fashion-MNIST with the small-data recipe (about 10 min on 2 cores), print the "
                                    "comparison and draw the learning curves")
    p.add_argument("--output", help="run directory (default: runs/demo-<date>-<time>)")
    p.add_argument("--full", action="store_true", help="the longer schedule (more epochs)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="seconds-long tour instead: random weights, a forward pass, "
                                                        "parameter counts")
    p.add_argument("--image-size", type=int, default=32, help="(--smoke)")
    p.add_argument("--num-classes", type=int, default=10, help="(--smoke)")
    p.add_argument("--batch-size", type=int, default=8, help="(--smoke)")
    p.add_argument("--seed", type=int, default=0, help="(--smoke)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model (with or without a teacher); torchrun-aware",
                       description="Train a model. Settings come from the defaults (the paper's recipe, Table 9 "
                                   "of Touvron et al. 2021, and the official main.py), then --recipe NAME (not "
                                   "given: chosen by the data, logged), then --config FILE.yaml, then these flags. "
                                   "The length is --epochs, or --budget-images / --budget-minutes. Under torchrun it "
                                   "trains with DDP. The learning rate actually used is --lr x effective batch / "
                                   "512; the run prints it at the start.")
    p.add_argument("--config", help="YAML file of settings (keys as the flags, with underscores; the run writes "
                                    "its resolved settings as <output>/config.yaml)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache-teacher", help="fill a --teacher-cache ahead of deit train: the teacher's outputs "
                                             "for the exact views of the given epochs; torchrun-aware",
                       description="Run the teacher over the replayed views of the run that the settings describe "
                                   "(the same --config/--recipe/flags as its deit train, with --teacher-cache DIR) "
                                   "and store its outputs, so that training reads them instead of running the "
                                   "teacher. Machines can fill different --epoch-range's of one directory.")
    p.add_argument("--config", help="YAML file of settings, as for deit train")
    p.add_argument("--epoch-range", type=int, nargs=2, metavar=("FIRST", "LAST"),
                   help="epochs FIRST .. LAST-1 (default: every epoch of the run: --epochs, or the epochs its "
                        "--budget-images takes)")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="fill the shares of a run of N processes (torchrun --nproc_per_node N) from this one "
                        "process; under torchrun each process fills its own (default: 1)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_cache_teacher)

    p = sub.add_parser("recipes", help="list the training recipes shipped with deit (deit train --recipe NAME), "
                                       "or print one's resolved settings as YAML for a --config file")
    p.add_argument("name", nargs="?", metavar="NAME", help="a recipe: print every setting it gives a run")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 per head, confusion matrix PNG")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by deit train (or any weights file with "
                                                       "--model)")
    p.add_argument("--model", help="architecture, for foreign weights files")
    p.add_argument("--dataset", help="data set (default: the one the checkpoint was trained on; an image folder by "
                                     "the absolute path recorded at training)")
    p.add_argument("--data-dir", help="data folder for IDX-file data sets")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--output", help="folder for confusion_matrix.png and eval.json (default: beside the checkpoint)")
    p.add_argument("--bad-images", default="fail", choices=BAD_IMAGE_POLICIES,
                   help="image folders: stop at an unreadable file (fail, naming it) or skip it with a warning, "
                        "left out of the accuracy and named in the output")
    add_preprocessing_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes with names for image files")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...), folders (searched recursively) or globs ('photos/*.jpg')")
    p.add_argument("--checkpoint", help="checkpoint written by deit train, or official / timm / HF weights")
    p.add_argument("--model", help="architecture, for foreign weights files (default: inferred from the shapes)")
    p.add_argument("--pretrained", action="store_true",
                   help="use the published weights of --model: from --checkpoint-dir / $DEIT_CHECKPOINT_DIR, the "
                        "download cache ($DEIT_CACHE), else downloaded and verified (docs/models.md)")
    p.add_argument("--checkpoint-dir", help="folder holding published weight files for --pretrained "
                                            "(default: $DEIT_CHECKPOINT_DIR)")
    p.add_argument("--onnx", help="instead of --checkpoint: a file written by deit export (runs with onnxruntime, "
                                  "without the library's model code)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--quantize", choices=["int8"],
                   help="int8: run --checkpoint through ONNX Runtime with int8 matrix products (exported and "
                        "quantised on the fly, as deit export --quantize int8)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model before predicting (the first batch pays the compilation)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (an unreadable file gives "
                                                       "{\"image\": ..., \"error\": ...}); exit code 1 if any failed")
    add_preprocessing_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript, verified against PyTorch",
                       description="Export the student of a checkpoint to ONNX (.onnx) or TorchScript (.pt). The "
                                   "batch axis is dynamic; preprocessing and class names are stored in the file; "
                                   "the result is checked against PyTorch on random and real images.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by deit train (or converted weights)")
    p.add_argument("--output", required=True, help="model.onnx, or model.pt for TorchScript")
    p.add_argument("--format", choices=["onnx", "torchscript"], help="default: from the suffix of --output")
    p.add_argument("--head", choices=["fusion", "cls", "dist", "all"],
                   help="DeiT output(s): fused prediction, one head, or all three (default: the model's own "
                        "return_logits_type, fusion for a distilled DeiT)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights stored in the checkpoint")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--quantize", choices=["int8"],
                   help="int8: dynamic int8 quantisation of the matrix products by ONNX Runtime (a .onnx output), "
                        "verified by top-1 agreement with fp32 on real images and a logit bound (--atol)")
    p.add_argument("--atol", type=float, help="verification bound on |exported - PyTorch| logits (default 1e-4; with "
                                              "--quantize int8: 0.5)")
    p.add_argument("--data-dir", help="data folder for IDX-file data sets (real-image verification)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    add_preprocessing_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("visualize", help="attention rollout of the cls and dist tokens over images; cls/dist "
                                         "token similarity per layer",
                       description="Attention rollout (Abnar & Zuidema 2020) of the class token and, for a DeiT, of "
                                   "the distillation token, overlaid on each image as PNGs; for a DeiT also the "
                                   "cosine similarity of the two tokens after every layer, printed and plotted.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by deit train, or converted weights")
    p.add_argument("--model", help="architecture, for foreign weights files")
    p.add_argument("--output", help="folder for the PNGs (default: <checkpoint folder>/visualize)")
    p.add_argument("--per-layer", action="store_true", help="also each layer's attention of the cls / dist token")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="how heads are combined")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="fraction of the lowest attention weights dropped before the rollout")
    p.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("benchmark", help="speed, memory and MFU of our models against timm and HF transformers "
                                         "with the same weights, in one process",
                       description="Inference and distillation-training-step throughput of our models, timm's and "
                                   "HF transformers' with identical weights, interleaved in one process; GEMM peak "
                                   "and MFU measured in the same run; ratios printed and written as JSON.")
    p.add_argument("--model", help="inference model (default deit_small_distilled_patch16_224)")
    p.add_argument("--train-model", help="distilled student of the training step (default "
                                         "deit_tiny_distilled_patch16_224)")
    p.add_argument("--teacher", help="teacher of the training step (default convnext_atto)")
    p.add_argument("--batch-size", type=int, default=32, help="inference batch")
    p.add_argument("--train-batch-size", type=int, default=32)
    p.add_argument("--modes", help="comma-separated: fp32,bf16 (CPU); fp16,compile too on CUDA (default: all "
                                   "of the device's)")
    p.add_argument("--tasks", help="comma-separated: inference, train (DeiT⚗ step with a ConvNeXt teacher), distill "
                                   "(DeiT⚗ step with the paper's RegNetY-16GF teacher: live, from the teacher cache, "
                                   "undistilled, timm's, timm's TokenDistillationTask), deploy (CPU inference: "
                                   "fp32, int8, compiled; ours and timm's) (default: all)")
    p.add_argument("--distill-teacher", help="timm teacher of the distill task (default regnety_160, the paper's)")
    p.add_argument("--no-compile", action="store_true", help="deploy task: leave out the torch.compile rows (each "
                                                             "compilation takes about a minute on CPU)")
    p.add_argument("--peers", help="comma-separated: timm,hf (default both)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--deit-runtime-only", action="store_true",
                   help="accepted for old scripts; there is one runtime (glibc's allocator settings are environment "
                        "variables now: docs/training.md)")
    p.add_argument("--json", help="where to write the JSON (default benchmarks/results/benchmark-<time>.json)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("list-models", help="list registered model names")
    p.add_argument("pattern", nargs="?", help="substring or glob, e.g. 'distilled' or 'deit_*_224'")
    p.add_argument("--params", action="store_true", help="also print parameter counts")
    p.add_argument("--flops", action="store_true", help="also print forward GFLOPs per image at the default size")
    p.add_argument("--markdown", action="store_true", help="the model-zoo table of docs/models.md")
    p.set_defaults(func=cmd_list_models)

    p = sub.add_parser("info", help="describe a registered model, a checkpoint file or an HF save_pretrained folder")
    p.add_argument("model", help="registered model name, checkpoint path or HF folder (config.json + weights)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert official DeiT / timm / HF / safetensors weights to this "
                                       "library's format (.pth or .safetensors by DST's suffix)")
    p.add_argument("src", help="source checkpoint file, or an HF save_pretrained folder (its preprocessing and "
                               "labels are carried over)")
    p.add_argument("dst", help="destination file (.pth, .pt or .safetensors)")
    p.add_argument("--model", help="registered architecture (inferred from the weights when omitted)")
    p.add_argument("--num-classes", type=int, help="number of classes (head re-initialised if it differs)")
    p.add_argument("--image-size", type=int, help="target image size (position embedding resampled)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chatty = args.verbose or args.command in ("train", "demo")
    logging.basicConfig(level=logging.INFO if chatty else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (DeitError, OSError) as err:  # a message for the user; anything else is a bug and keeps its traceback
        if args.debug:
            raise
        print(f"deit {args.command}: error: {err}", file=sys.stderr)
        return 2
