"""The scripts in examples/ run as a user runs them (a subprocess, one thread, outputs under
tmp_path) and print what they promise: the logits of converted official weights equal timm's,
distillation on an image folder trains and evaluates every head, a user-defined nn.Module
teacher drives the distillation head without becoming part of the student."""
from __future__ import annotations

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
    return proc


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match[1])


def test_infer_official_checkpoint_matches_timm(tmp_path):
    """~8 s: a stand-in official DeiT-Ti⚗ checkpoint, converted, top-5 for two images, logits == timm's."""
    proc = run_example("infer_official_checkpoint.py", "--demo-random-weights", "--output", str(tmp_path / "out"),
                       cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert number(r"max abs difference ([0-9.e+-]+)", out) < 1e-4
    for head in ("cls head", "dist head", "fusion"):
        assert number(rf"{head} ([0-9.e+-]+)", out) < 1e-4, head
    assert "-> OK" in out
    # the official container was written, then converted to our format with the architecture recorded
    official = tmp_path / "out" / "official" / "deit_tiny_distilled_patch16_224-standin.pth"
    assert set(torch.load(official, weights_only=True)) == {"model"}
    from deit import build_from_checkpoint

    model, _ = build_from_checkpoint(tmp_path / "out" / "deit_tiny_distilled_patch16_224.safetensors")
    assert model.model_name == "deit_tiny_distilled_patch16_224" and model.num_classes == 1000
    # top-5 per image, ranked, with ImageNet class names
    for image in ("demo-0.png", "demo-1.png"):
        block = out.split(f"{image}:\n")[1]
        ranks = re.findall(r"^  (\d)\. .+\(class +(\d+)\)  p=([0-9.]+)$", block, flags=re.MULTILINE)[:5]
        assert [r[0] for r in ranks] == ["1", "2", "3", "4", "5"], block
        probabilities = [float(r[2]) for r in ranks]
        assert probabilities == sorted(probabilities, reverse=True)
    assert "wrote stand-in official checkpoint" in out and (tmp_path / "out" / "images" / "demo-1.png").is_file()


@pytest.mark.slow
def test_distill_imagefolder_trains_teacher_and_student(tmp_path):
    """~35 s: a digits image folder, ConvNeXt teacher, hard-distilled DeiT, eval of each head, predict."""
    data, runs = tmp_path / "digits-folder", tmp_path / "runs"
    proc = run_example("distill_imagefolder.py", "--data", str(data), "--make-demo-folder", "--output", str(runs),
                       "--tiny", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    # the demo folder: 10 class folders per split, 60 train and 10 val PNGs each
    for split, count in (("train", 60), ("val", 10)):
        folders = sorted(p.name for p in (data / split).iterdir())
        assert folders == [str(d) for d in range(10)]
        assert all(len(list((data / split / f).glob("*.png"))) == count for f in folders), split
    # accuracies (chance is 10 %): the ConvNeXt teacher learns digits in 2 epochs; the tiny
    # student only starts to (a ViT needs more updates), but each head is well above chance
    assert number(r"teacher convnext_atto_32: best val top-1 ([0-9.]+)%", out) >= 80.0
    cls_acc = number(r"student top-1: cls ([0-9.]+)%", out)
    dist_acc = number(r"student top-1: cls [0-9.]+%  dist ([0-9.]+)%", out)
    fusion_acc = number(r"student top-1: cls [0-9.]+%  dist [0-9.]+%  fusion ([0-9.]+)%", out)
    assert min(cls_acc, dist_acc, fusion_acc) > 15.0, out
    assert number(r"distillation head agrees with the teacher on ([0-9.]+)%", out) > 15.0
    # two predictions with the checkpoint's class names
    predictions = re.findall(r"^predict .+ \(true class (\d)\): (\d) \([0-9.]+\), (\d) \([0-9.]+\), (\d)", out,
                             flags=re.MULTILINE)
    assert [p[0] for p in predictions] == ["0", "9"], out
    # both run directories, the evaluation files, a student checkpoint without the teacher
    for run in ("teacher", "student"):
        for name in ("best.pth", "last.pth", "metrics.csv", "config.yaml", "summary.json"):
            assert (runs / run / name).is_file(), (run, name)
    assert (runs / "student" / "best-confusion_matrix.png").is_file()
    assert (runs / "student" / "best-eval.json").is_file()
    student = torch.load(runs / "student" / "best.pth", weights_only=True)
    assert student["config"]["distillation_type"] == "hard"
    assert student["config"]["teacher_checkpoint"] == str(runs / "teacher" / "best.pth")
    assert "dist_token" in student["model"]
    assert not any(k.startswith(("stem", "stages", "teacher")) for k in student["model"])


@pytest.mark.slow
def test_custom_teacher_module_drives_the_distillation_head(tmp_path):
    """~15 s: a plain-PyTorch CNN teacher whose classes 1 and 7 are swapped, attached with
    set_teacher; the hand-written loop with DistillationLoss makes the distillation head
    follow the teacher (1 -> 7) while the class head follows the labels."""
    proc = run_example("custom_teacher.py", "--tiny", "--attach", "set_teacher", "--swap-teacher-classes", "1", "7",
                       "--output", str(tmp_path / "out"), cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert number(r"teacher SmallCNN .*val top-1 ([0-9.]+)%", out) >= 90.0
    # the teacher is not part of the student, frozen, unchanged
    assert "check: teacher tensors in the student's state_dict(): 0 of" in out
    assert "check: teacher tensors in the student's optimizer: 0" in out
    assert "parameters): True; in eval mode after student.train(): True" in out
    assert "unchanged by the student's training: True" in out
    # every head well above chance (10 %); the distillation head agrees with the (wrong) teacher
    cls_acc = number(r"student val top-1: cls ([0-9.]+)%", out)
    fusion_acc = number(r"student val top-1: .*fusion ([0-9.]+)%", out)
    assert cls_acc > 50.0 and fusion_acc > 50.0, out
    cls_agree = number(r"agreement with the teacher: cls ([0-9.]+)%", out)
    dist_agree = number(r"agreement with the teacher: cls [0-9.]+%  dist ([0-9.]+)%", out)
    assert dist_agree > cls_agree + 5, out
    dist_says_7 = number(r"the dist head for ([0-9]+)%", out)
    cls_says_7 = number(r"the cls head for ([0-9]+)%", out)
    assert dist_says_7 >= 50 and cls_says_7 <= 20, out
    # the saved student holds no teacher tensor and reloads into a teacher-less DeiT
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "student.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert "head_dist.weight" in keys and not any(k.startswith(("features", "classifier", "model.", "teacher"))
                                                  for k in keys)
    assert "same fused logits: True" in out


@pytest.mark.slow
def test_custom_teacher_given_to_the_constructor_stays_outside_the_student(tmp_path):
    """The teacher module given to DeiT(...) stays outside the student (~15 s)."""
    proc = run_example("custom_teacher.py", "--tiny", "--attach", "constructor", "--output", str(tmp_path / "out"),
                       cwd=tmp_path)
    out = proc.stdout
    assert "check: teacher tensors in the student's state_dict(): 0 of" in out, out
    assert "check: teacher tensors in the student's optimizer: 0" in out, out
    assert "in eval mode after student.train(): True" in out, out
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert number(r"student val top-1: .*fusion ([0-9.]+)%", out) > 30.0
