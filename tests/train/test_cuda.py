"""GPU paths: AMP with a grad scaler, pinned memory + non_blocking copies, the teacher
on the GPU, the benchmark's CUDA modes. There is no GPU on the development machine: these tests
skip cleanly there and run wherever CUDA is available."""
import pytest
import torch

from deit.train.settings import load_config
from deit.weights.factory import create_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_training_on_cuda_with_amp_and_a_teacher(tmp_path, amp_dtype):
    from deit.train.run import train

    teacher_dir = tmp_path / "teacher"
    train(load_config(None, dict(model="convnext_atto_32", dataset="digits", epochs=1, warmup_epochs=0,
                                 batch_size=32, output=str(teacher_dir), progress=False, device="cuda")))
    result = train(load_config(None, dict(
        model="deit_pico_distilled_patch4_32", dataset="digits", epochs=1, warmup_epochs=0, batch_size=32,
        teacher_model="convnext_atto_32", teacher_checkpoint=str(teacher_dir / "best.pth"),
        distillation_type="hard", amp=True, amp_dtype=amp_dtype, device="cuda", output=str(tmp_path / "s"),
        progress=False)))
    assert result.final["val_acc1"] > 10.0


@cuda
def test_teacher_follows_the_student_to_the_gpu():
    model = create_model("deit_pico_distilled_patch4_32", num_classes=10)
    model.set_teacher(create_model("convnext_atto_32", num_classes=10), inputs="student")
    model.cuda()
    assert next(model.teacher.parameters()).is_cuda
    student, teacher = model.train()(torch.randn(2, 3, 32, 32, device="cuda"))
    assert student[0].is_cuda and teacher.is_cuda and not teacher.requires_grad


@cuda
def test_benchmark_adds_cuda_modes():
    from deit.bench.harness import BenchmarkConfig, default_modes, run_benchmark

    assert default_modes(torch.device("cuda")) == ("fp32", "bf16", "fp16", "compile")
    report = run_benchmark(BenchmarkConfig(inference_model="deit_pico_distilled_patch4_32",
                                           train_model="deit_pico_distilled_patch4_32", teacher="convnext_atto_32",
                                           inference_batch=4, train_batch=4, warmup=1, repeats=2,
                                           modes=("fp32", "fp16"), device="cuda"),
                           log=lambda _: None)
    assert {m.mode for m in report.measurements} == {"fp32", "fp16"}
    assert all(m.peak_memory_mb is not None and m.peak_memory_mb > 0 for m in report.measurements)


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from deit.train.run import train

    with pytest.raises(ValueError, match="CUDA is not available"):
        train(load_config(None, dict(model="deit_pico_patch4_32", dataset="digits", epochs=1, warmup_epochs=0,
                                     device="cuda", progress=False)))


def test_cpu_loader_does_not_pin_memory(monkeypatch):
    from deit.train import distributed
    from deit.train.run import build_data

    config = load_config(None, dict(model="deit_pico_patch4_32", dataset="digits", device="cpu"))
    train_loader = build_data(config, distributed.detect())[0]
    assert train_loader.pin_memory is False
