"""A teacher the user already has, given to the training system as an ``nn.Module``
(``train(config, teacher=module)``): its inputs declared or converted, distillation through
the whole run, and a resume that needs the same teacher again."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.train.run import train
from deit.train.settings import load_config
from tests.helpers import perturb_

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # what a typical MNIST CNN was trained with
RUN = dict(dataset="digits", image_size=8, model="deit_pico_distilled_patch4_32", batch_size=64, progress=False,
           model_ema=False, mixup=0.0, cutmix=0.0, reprob=0.0, auto_augment=None, scale=(1.0, 1.0), warmup_epochs=1,
           repeated_aug=1, drop_path=0.0, recipe="paper", lr=5e-3, epochs=2, distillation_type="hard",
           teacher_model="module:digits-cnn")  # the label of a teacher given as a module, the run's record


class DigitsCNN(nn.Module):
    """A user's own teacher: plain PyTorch, trained below on digits at MNIST's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, 10)


@pytest.fixture(scope="module")
def digits_cnn():
    from deit.data import build_transform, load_dataset

    data = load_dataset("digits", "train")
    data.transform = build_transform(is_train=False, image_size=8, in_channels=1, mean=MNIST_MEAN, std=MNIST_STD)
    x, y = (torch.stack(t) if i == 0 else torch.tensor(t) for i, t in enumerate(zip(*[data[i]
                                                                                      for i in range(len(data))])))
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def test_a_module_teacher_without_its_inputs_is_refused_naming_what_to_give(digits_cnn, tmp_path):
    with pytest.raises(ConfigError, match=r"which inputs does the teacher DigitsCNN take\?.*teacher_mean=.*"
                                          r"teacher_inputs='student'"):
        train(load_config(None, {**RUN, "output": str(tmp_path / "run")}), teacher=digits_cnn)
    assert not (tmp_path / "run").exists()  # nothing left behind
    with pytest.raises(ConfigError, match="two teachers"):
        train(load_config(None, {**RUN, "teacher_model": "resnet20_32", "output": str(tmp_path / "run")}),
              teacher=digits_cnn)


def test_a_module_teacher_distils_through_the_run_and_resumes_only_with_itself(digits_cnn, tmp_path, caplog):
    out = tmp_path / "run"
    settings = {**RUN, "output": str(out), "teacher_mean": list(MNIST_MEAN), "teacher_std": list(MNIST_STD)}
    with caplog.at_level("INFO", logger="deit"):
        first = train(load_config(None, {**settings, "stop_after_epochs": 1}), teacher=digits_cnn)
    assert "teacher DigitsCNN normalisation mean [0.1307] std [0.3081] (teacher_mean/teacher_std) differs" \
        in caplog.text
    assert first.epochs_run == 1 and first.final["train_distillation_loss"] > 0
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["config"]["teacher_model"] == "module:digits-cnn"
    assert not any(key.startswith(("features", "fc.")) for key in saved["model"])  # the teacher is not the student's

    other = perturb_(DigitsCNN())
    with pytest.raises(ConfigError, match="the teacher is not the one this run trained with"):
        train(load_config(None, {**settings, "resume": True}), teacher=other)
    with pytest.raises(ConfigError, match=r"module:digits-cnn.*was a module given in Python: give it again"):
        train(load_config(None, {**settings, "resume": True}))
    done = train(load_config(None, {**settings, "resume": True}), teacher=digits_cnn)
    assert done.epochs_run == 1
    # the distillation head learns the teacher's decisions: it agrees with it more than chance
    assert done.final["val_dist_teacher_agreement"] > 30.0, done.final


TORCHRUN_SCRIPT = '''
import sys

import torch
from torch import nn

from deit.train.run import train
from deit.train.settings import load_config

torch.manual_seed(0)  # every process builds the same teacher, as a user's script would load the same weights
teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
settings = dict({run}, output=sys.argv[1], epochs=1, batch_size=32)
train(load_config(None, settings), teacher=teacher, teacher_inputs="student")
'''


@pytest.mark.slow
def test_a_module_teacher_under_torchrun(tmp_path):
    """Two processes, each given the module by the user's script: one run, the teacher's
    digest recorded once, the distillation loss on both ranks' batches."""
    import os
    import subprocess
    import sys

    from deit.distill.cache import module_fingerprint

    script = tmp_path / "distil.py"
    script.write_text(TORCHRUN_SCRIPT.replace("{run}", repr({**RUN, "teacher_mean": None, "teacher_std": None})))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537", str(script),
           str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out / "last.pth", weights_only=True)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
    assert saved["inputs_record"]["teacher_weights_sha256"] == module_fingerprint(teacher.eval())
    assert isinstance(saved["rng"], list) and len(saved["rng"]) == 2
    assert saved["metrics"]["train_distillation_loss"] > 0
