"""The scripts in examples/ run as a user runs them, and the test checks what they compute —
the files they write and the objects they build — against references of its own, not the
verdicts they print about themselves:

- ``infer_official_checkpoint.py`` (a subprocess, as a user runs it): its converted file gives
  the logits of timm's model loaded with the original file, and its printed top-5 is timm's
  own pipeline's (``resolve_data_config`` + ``create_transform``) given the same weights;
- ``distill_imagefolder.py`` (a subprocess): each head of the student checkpoint it writes is
  evaluated here on the validation folder, compared with the ``best-eval.json`` it wrote, and
  the distillation head's agreement with the teacher checkpoint it wrote is measured here;
- ``custom_teacher.py`` (imported and run in-process, so the test holds the very modules it
  builds): the teacher is neither in the student's ``state_dict()`` nor in its optimizer,
  stays frozen and unchanged, and the student's heads are measured here on the digits split.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("DEIT_CHECKPOINT_DIR", None)
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def import_example(script: str):
    """The example as a module (its ``main`` is not run on import)."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(script).stem}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_infer_official_checkpoint_matches_timm(tmp_path):
    """~8 s: a stand-in official DeiT-Ti⚗ checkpoint, converted; logits and top-5 against timm."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from deit import build_from_checkpoint

    out = run_example("infer_official_checkpoint.py", "--demo-random-weights", "--output", str(tmp_path / "out"),
                      cwd=tmp_path).stdout
    # the reference: timm's model of the same name loaded with the ORIGINAL file it wrote
    official = tmp_path / "out" / "official" / "deit_tiny_distilled_patch16_224-standin.pth"
    state = torch.load(official, weights_only=True)
    assert set(state) == {"model"}  # the official release's container
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    reference.load_state_dict(state["model"])
    reference.eval()
    transform = create_transform(**resolve_data_config(model=reference))
    images = [tmp_path / "out" / "images" / f"demo-{i}.png" for i in range(2)]
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])  # (2, 3, 224, 224)
    # the converted file records the architecture and computes what timm computes, head by head
    model, _ = build_from_checkpoint(tmp_path / "out" / "deit_tiny_distilled_patch16_224.safetensors")
    assert model.model_name == "deit_tiny_distilled_patch16_224" and model.num_classes == 1000
    model.eval()
    with torch.no_grad():
        feats = reference.forward_features(batch)  # (B, N+2, D)
        cls_ours, dist_ours = model.forward_heads(model.forward_features(batch))  # (B, 1000) each
        torch.testing.assert_close(cls_ours, reference.head(feats[:, 0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(dist_ours, reference.head_dist(feats[:, 1]), atol=1e-4, rtol=0)
        probabilities = reference(batch).softmax(-1)  # (B, 1000) the fused logits
        torch.testing.assert_close(model.student_model(batch).softmax(-1), probabilities, atol=1e-5, rtol=0)
    # the printed top-5 of each image is timm's (up to ties within the printed precision),
    # ranked, with ImageNet names
    names = timm.data.ImageNetInfo("imagenet-1k").index_to_description
    for i, image in enumerate(images):
        block = out.split(f"{image}:\n")[1]
        rows = re.findall(r"^  (\d)\. (.+?) +\(class +(\d+)\)  p=([0-9.]+)$", block, flags=re.MULTILINE)[:5]
        assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5], block
        indices, printed = [int(r[2]) for r in rows], torch.tensor([float(r[3]) for r in rows])
        assert [r[1] for r in rows] == [names(k) for k in indices], block
        torch.testing.assert_close(printed, probabilities[i, indices], atol=2e-4, rtol=0)  # timm's, per class
        assert printed.tolist() == sorted(printed.tolist(), reverse=True)
        assert printed[-1] >= probabilities[i].topk(6).values[-1] - 2e-4  # no class timm ranks higher is left out


def _val_tensors(root: Path, data_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every validation image of the folder through the checkpoint's recorded preprocessing."""
    from deit.data import build_transform, load_image

    transform = build_transform(is_train=False, image_size=data_config["image_size"],
                                in_channels=data_config["in_channels"], mean=data_config["mean"],
                                std=data_config["std"])
    files = sorted((root / "val").glob("*/*.png"))
    x = torch.stack([transform(load_image(p, data_config["in_channels"])) for p in files])  # (N, C, H, W)
    return x, torch.tensor([int(p.parent.name) for p in files])


@pytest.mark.slow
def test_distill_imagefolder_trains_teacher_and_student(tmp_path):
    """~35 s: a digits image folder, ConvNeXt teacher, hard-distilled DeiT, eval of each head, predict."""
    from deit.deploy.predict import load_for_inference

    data, runs = tmp_path / "digits-folder", tmp_path / "runs"
    out = run_example("distill_imagefolder.py", "--data", str(data), "--make-demo-folder", "--output", str(runs),
                      "--tiny", cwd=tmp_path).stdout
    # the demo folder: 10 class folders per split, 60 train and 10 val PNGs each
    for split, count in (("train", 60), ("val", 10)):
        folders = sorted(p.name for p in (data / split).iterdir())
        assert folders == [str(d) for d in range(10)]
        assert all(len(list((data / split / f).glob("*.png"))) == count for f in folders), split
    # both run directories, the evaluation files, a student checkpoint without the teacher
    for run in ("teacher", "student"):
        for name in ("best.pth", "last.pth", "metrics.csv", "config.yaml", "summary.json"):
            assert (runs / run / name).is_file(), (run, name)
    assert (runs / "student" / "best-confusion_matrix.png").is_file()
    student_state = torch.load(runs / "student" / "best.pth", weights_only=True)
    assert student_state["config"]["distillation_type"] == "hard"
    assert student_state["config"]["teacher_checkpoint"] == str(runs / "teacher" / "best.pth")
    assert "dist_token" in student_state["model"]
    assert not any(k.startswith(("stem", "stages", "teacher")) for k in student_state["model"])

    # the checkpoints it wrote, evaluated here on the 100 validation images (chance: 10 %)
    teacher, teacher_meta = load_for_inference(runs / "teacher" / "best.pth")
    student, student_meta = load_for_inference(runs / "student" / "best.pth")
    assert student_meta["data_config"] == teacher_meta["data_config"]  # one recipe: the same inputs
    x, y = _val_tensors(data, student_meta["data_config"])
    with torch.no_grad():
        teacher_pred = teacher(x).argmax(1)  # (N,)
        cls_logits, dist_logits = student.forward_heads(student.forward_features(x))  # (N, 10) each
        fused = student.student_model(x)  # (N, 10) eval mode: the fused logits
    accuracy = {name: 100.0 * (logits.argmax(1) == y).double().mean().item()  # float64: exact for 100 images
                for name, logits in (("cls_acc1", cls_logits), ("dist_acc1", dist_logits), ("acc1", fused))}
    # the ConvNeXt teacher learns digits in 2 epochs; the tiny student only starts to (a ViT
    # needs more updates), but each head is well above chance
    assert 100.0 * (teacher_pred == y).float().mean().item() >= 80.0
    assert min(accuracy.values()) > 15.0, accuracy
    assert 100.0 * (dist_logits.argmax(1) == teacher_pred).float().mean().item() > 15.0
    # the evaluation file it wrote holds these numbers
    written = json.loads((runs / "student" / "best-eval.json").read_text())["metrics"]
    assert written["count"] == len(y)
    for name, value in accuracy.items():
        assert written[name] == pytest.approx(value, abs=1e-6), name
    # its two predictions: the first and the last class folder's first image, top-3 as the model ranks them
    predictions = re.findall(r"^predict (\S+) \(true class (\d)\): (\d) \([0-9.]+\), (\d) \([0-9.]+\), (\d)", out,
                             flags=re.MULTILINE)
    assert [p[1] for p in predictions] == ["0", "9"], out
    files = sorted((data / "val").glob("*/*.png"))
    for path, _, *top3 in predictions:
        index = files.index(Path(path))
        assert [int(c) for c in top3] == fused[index].topk(3).indices.tolist(), path


def _run_custom_teacher(monkeypatch, tmp_path: Path, *argv: str) -> dict:
    """``custom_teacher.main(argv)`` in-process; returns the return code and the objects it
    built: the teacher it trained, the student it saved and the optimizer it made."""
    example = import_example("custom_teacher.py")
    built: dict = {}
    train_teacher, save_model = example.train_teacher, example.deit.save_model

    def keep_teacher(*args, **kwargs):
        built["teacher"] = train_teacher(*args, **kwargs)
        built["teacher_state"] = {k: v.clone() for k, v in built["teacher"].state_dict().items()}
        return built["teacher"]

    def keep_student(model, path, *args, **kwargs):
        built["student"] = model
        return save_model(model, path, *args, **kwargs)

    class KeptAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["optimizer"] = self

    monkeypatch.setattr(example, "train_teacher", keep_teacher)
    monkeypatch.setattr(example.deit, "save_model", keep_student)
    monkeypatch.setattr(example.torch.optim, "AdamW", KeptAdamW)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses above (OMP_NUM_THREADS=1): small kernels, a busy machine
    try:
        built["code"] = example.main(["--tiny", "--output", str(tmp_path / "out"), *argv])
    finally:
        torch.set_num_threads(threads)
    built["example"] = example
    return built


def _assert_teacher_outside_the_student(built: dict) -> None:
    """The teacher module is the one it trained, frozen, in eval mode, unchanged, and none of
    its tensors is in the student's state_dict() or optimizer."""
    student, teacher = built["student"], built["teacher"]
    attached = student.teacher.model if isinstance(student.teacher, built["example"].SwapClasses) else student.teacher
    assert attached is teacher
    teacher_tensors = {t.data_ptr() for t in (*teacher.parameters(), *teacher.buffers())}  # BatchNorm statistics too
    assert not [k for k, v in student.state_dict().items() if v.data_ptr() in teacher_tensors]
    assert not any(k.startswith(("teacher", "features", "classifier", "model.")) for k in student.state_dict())
    optimized = {p.data_ptr() for group in built["optimizer"].param_groups for p in group["params"]}
    assert not optimized & teacher_tensors
    assert optimized == {p.data_ptr() for p in student.parameters()}
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    student.train()
    assert not teacher.training  # the student's mode does not reach the teacher
    student.eval()
    assert all(torch.equal(built["teacher_state"][k], v) for k, v in teacher.state_dict().items())


@pytest.mark.slow
def test_custom_teacher_module_drives_the_distillation_head(tmp_path, monkeypatch):
    """~15 s: a plain-PyTorch CNN teacher whose classes 1 and 7 are swapped, attached with
    set_teacher; the hand-written loop with DistillationLoss makes the distillation head
    follow the teacher (1 -> 7) while the class head follows the labels."""
    built = _run_custom_teacher(monkeypatch, tmp_path, "--attach", "set_teacher", "--swap-teacher-classes", "1", "7")
    assert built["code"] == 0
    _assert_teacher_outside_the_student(built)
    student, example = built["student"], built["example"]
    _, _, x_val, y_val = example.load_digits_tensors()  # the example's split, (N, 1, 8, 8)
    with torch.no_grad():
        teacher_pred = student.teacher(x_val).argmax(1)  # the swapped teacher
        cls_logits, dist_logits = student.forward_heads(student.forward_features(x_val))  # (N, 10) each
        fused = student.student_model(x_val)  # (N, 10)

    def pct(mask: torch.Tensor) -> float:
        return 100.0 * mask.float().mean().item()

    swapped = torch.where(y_val == 1, 7, torch.where(y_val == 7, 1, y_val))
    assert pct(teacher_pred == swapped) >= 90.0  # a good teacher, wrong on purpose on 1 and 7
    # every head well above chance (10 %); the distillation head agrees with the teacher more
    assert pct(cls_logits.argmax(1) == y_val) > 50.0 and pct(fused.argmax(1) == y_val) > 50.0
    assert pct(dist_logits.argmax(1) == teacher_pred) > pct(cls_logits.argmax(1) == teacher_pred) + 5
    ones = y_val == 1
    assert pct(dist_logits[ones].argmax(1) == 7) >= 50 and pct(cls_logits[ones].argmax(1) == 7) <= 20
    # the saved student holds no teacher tensor and reloads into a teacher-less DeiT
    from safetensors import safe_open

    from deit import DeiT, load_pretrained

    with safe_open(str(tmp_path / "out" / "student.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert "head_dist.weight" in keys and set(keys) == set(student.state_dict())
    reloaded = DeiT(**{k: student.config[k] for k in ("num_classes", "d_model", "image_size", "patch_size",
                                                      "in_channels", "encoder_mlp_d", "encoder_num_heads",
                                                      "num_encoder_blocks")})
    load_pretrained(reloaded, tmp_path / "out" / "student.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().student_model(x_val), fused, atol=0, rtol=0)


@pytest.mark.slow
def test_custom_teacher_given_to_the_constructor_stays_outside_the_student(tmp_path, monkeypatch):
    """The teacher module given to DeiT(...) stays outside the student (~15 s)."""
    built = _run_custom_teacher(monkeypatch, tmp_path, "--attach", "constructor")
    assert built["code"] == 0
    _assert_teacher_outside_the_student(built)
    _, _, x_val, y_val = built["example"].load_digits_tensors()
    with torch.no_grad():
        fused = built["student"].student_model(x_val)
    assert 100.0 * (fused.argmax(1) == y_val).float().mean().item() > 30.0
