"""deit benchmark: same weights in every implementation, FLOPs/MFU/ratios consistent, JSON written.
(Speed itself is measured by the benchmark command, never asserted in a test.)"""
import json

import pytest

from deit.bench.harness import (BenchmarkConfig, OfficialDistillationLoss, distill_steps, run_benchmark, same_weights,
                                write_json)
from deit.cli import main

SMALL = dict(inference_model="deit_pico_distilled_patch4_32", train_model="deit_pico_distilled_patch4_32",
             teacher="convnext_atto_32", inference_batch=4, train_batch=4, warmup=0, repeats=2,
             distill_teacher="regnety_002", deploy_compile=False)


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("transformers")
    return run_benchmark(BenchmarkConfig(**SMALL, modes=("fp32",)), log=lambda _: None)


def test_every_implementation_holds_the_same_weights(report):
    inference = [m for m in report.measurements if m.task == "inference"]
    assert {m.impl for m in inference} == {"ours", "timm", "hf"}
    for m in inference:
        if m.impl != "ours":
            assert m.max_abs_diff_vs_ours < 1e-5, m


def test_flops_mfu_and_ratios_are_consistent(report):
    by = {(m.task, m.impl): m for m in report.measurements}
    for task in ("inference", "train"):
        flops = {m.flops_per_image for (t, _), m in by.items() if t == task}
        assert len(flops) == 1 and flops.pop() > 0  # one model, one FLOP count, whatever the implementation
    for m in report.measurements:
        assert m.images_per_s > 0 and len(m.times_s) == 2
        if m.impl.endswith("_int8"):  # no int8 GEMM peak is measured: no MFU
            assert m.mfu is None
            continue
        assert m.mfu == pytest.approx(m.flops_per_image * m.images_per_s / report.gemm_peak_flops["fp32"])
    ratios = report.ratios()
    ours, timm = by[("inference", "ours")], by[("inference", "timm")]
    assert ratios["inference/fp32/ours_over_timm"] == pytest.approx(ours.images_per_s / timm.images_per_s)
    assert report.gemm_peak_flops["fp32"] > 1e9


def test_json_round_trip(report, tmp_path):
    path = write_json(report, tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert data["ratios"] == pytest.approx(report.ratios())
    assert len(data["measurements"]) == len(report.measurements)
    assert {"images_per_s", "images_per_s_spread", "mfu", "peak_memory_mb", "times_s"} <= set(data["measurements"][0])
    assert data["environment"]["threads"] >= 1


def test_official_loss_restatement_matches_ours():
    import torch
    from timm.loss import LabelSmoothingCrossEntropy

    from deit.distill.losses import DistillationLoss

    torch.manual_seed(0)
    teacher = torch.nn.Linear(12, 5)
    x, y = torch.randn(6, 12), torch.randint(0, 5, (6,))
    outputs = (torch.randn(6, 5), torch.randn(6, 5))
    for kind, reduction in (("hard", "batchmean"), ("soft", "official")):
        ours = DistillationLoss(LabelSmoothingCrossEntropy(0.1), teacher, kind, alpha=0.5, tau=3.0,
                                kl_reduction=reduction)
        peer = OfficialDistillationLoss(LabelSmoothingCrossEntropy(0.1), teacher, kind, 0.5, 3.0)
        torch.testing.assert_close(ours(x, outputs, y), peer(x, outputs, y))


def test_non_distilled_model_skips_hf_with_a_reason():
    impls, skipped = same_weights("deit_pico_patch4_32", with_hf=True)
    assert set(impls) == {"ours", "timm"} and "distillation token" in skipped[0]


def test_cli_writes_json_and_rejects_bad_settings(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", "--model", "deit_pico_distilled_patch4_32", "--tasks", "inference", "--peers", "timm",
                 "--modes", "fp32", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
                 "--deit-runtime-only", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ours ÷ this" in printed and json.loads(out.read_text())["ratios"]
    assert main(["benchmark", "--tasks", "infer"]) == 2
    assert "tasks has 'infer'" in capsys.readouterr().err
    assert main(["benchmark", "--repeats", "0"]) == 2


def test_attention_is_counted_in_flops():
    """torch's counter skips the CPU flash-attention kernel unless we register it: the count
    must equal the hand formula (linear layers + attention) for a one-block model."""
    import torch

    from deit.models.flops import count_flops
    from deit.weights.factory import create_model

    model = create_model("deit_pico_distilled_patch4_32", num_classes=10, num_encoder_blocks=1).eval()
    B, N, D, P = 2, 64 + 2, 64, 4 * 4 * 3
    hidden = model.blocks[0].mlp.fc1.out_features
    with torch.inference_mode():
        flops = count_flops(lambda: model.student_model(torch.randn(B, 3, 32, 32)))  # the no-grad path counted plain
    linear = 2 * B * (64 * P * D + N * (3 * D * D + D * D + 2 * D * hidden) + 2 * D * 10)
    attention = 2 * 2 * B * N * N * D  # q @ k^T and attn @ v
    assert flops == linear + attention


def test_bf16_without_bf16_units_is_skipped_with_a_reason(monkeypatch, tmp_path):
    """On a CPU without bf16 matrix units (patched, so this runs anywhere) bf16 is not timed:
    the report and its JSON say why, and nothing measured in bf16."""
    import torch

    from deit.train import runtime

    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    cfg = BenchmarkConfig(**{**SMALL, "repeats": 1}, modes=("bf16",), tasks=("inference",), peers=("timm",),
                          device="cpu")
    report = run_benchmark(cfg, log=lambda _: None)
    assert report.measurements == [] and set(report.gemm_peak_flops) == {"fp32"}
    note = [n for n in report.skipped if n.startswith("mode 'bf16'")]
    assert len(note) == 1 and torch.backends.cpu.get_cpu_capability() in note[0]
    assert json.loads(write_json(report, tmp_path / "b.json").read_text())["skipped"] == report.skipped


def test_distill_task_times_the_live_the_cached_and_the_undistilled_step_against_timm(report):
    rows = {m.impl: m for m in report.measurements if m.task == "distill"}
    assert set(rows) == {"ours", "ours_cached", "ours_undistilled", "timm", "timm_task"}
    # the teacher's forward is in the live steps' FLOPs only; the cached step is the student's alone
    assert rows["ours"].flops_per_image > rows["ours_cached"].flops_per_image
    assert rows["ours_cached"].flops_per_image == pytest.approx(rows["ours_undistilled"].flops_per_image)
    assert rows["timm"].flops_per_image == pytest.approx(rows["ours"].flops_per_image)
    ratios = report.ratios()
    cached = rows["ours_cached"].images_per_s
    assert ratios["distill/fp32/ours_cached_over_timm"] == pytest.approx(cached / rows["timm"].images_per_s)
    assert ratios["distill/fp32/ours_cached_over_ours_undistilled"] == pytest.approx(
        cached / rows["ours_undistilled"].images_per_s)
    assert "distill/fp32/ours_over_timm" in ratios


def test_distill_task_races_timms_token_distillation_task(report, tmp_path):
    rows = {m.impl: m for m in report.measurements if m.task == "distill"}
    task = rows["timm_task"]
    assert task.flops_per_image == pytest.approx(rows["ours"].flops_per_image)  # the same work: teacher + student
    ratios = report.ratios()
    assert ratios["distill/fp32/ours_over_timm_task"] == pytest.approx(rows["ours"].images_per_s / task.images_per_s)
    assert ratios["distill/fp32/ours_cached_over_timm_task"] == pytest.approx(
        rows["ours_cached"].images_per_s / task.images_per_s)
    assert json.loads(write_json(report, tmp_path / "b.json").read_text())["ratios"][
        "distill/fp32/ours_over_timm_task"] == pytest.approx(ratios["distill/fp32/ours_over_timm_task"])
    line = next(row for row in report.format_table().splitlines() if row.startswith("| distill | fp32 | timm_task |"))
    assert f"| {ratios['distill/fp32/ours_over_timm_task']:.2f} |" in line  # the "ours ÷ this" column
    assert not any("timm_task" in note for note in report.skipped)


def test_timms_task_step_has_the_loss_of_ours_from_the_same_weights_batch_and_teacher():
    """One step of each from the same start: timm's TokenDistillationTask (hard, ½ and ½,
    identity renormalisation) computes the loss ours does, so the race times the same work."""
    import torch

    skipped = []
    fns, _, folder = distill_steps(BenchmarkConfig(**SMALL), torch.device("cpu"), "fp32", skipped)
    try:
        losses = {impl: fns[impl]().item() for impl in ("ours", "timm", "timm_task")}
    finally:
        folder.cleanup()
    assert skipped == []
    assert losses["timm_task"] == pytest.approx(losses["ours"], abs=1e-5)
    assert losses["timm"] == pytest.approx(losses["ours"], abs=1e-5)


def test_timm_without_tasks_skips_the_timm_task_row_with_a_reason(monkeypatch):
    import sys

    import torch

    monkeypatch.setitem(sys.modules, "timm.task", None)  # `import timm.task` raises ImportError, as on older timm
    skipped = []
    fns, _, folder = distill_steps(BenchmarkConfig(**SMALL), torch.device("cpu"), "fp32", skipped)
    folder.cleanup()
    assert set(fns) == {"ours", "ours_cached", "ours_undistilled", "timm"}
    assert len(skipped) == 1 and "timm_task" in skipped[0] and "\n" not in skipped[0]


def test_deploy_task_compares_int8_with_timm_fp32_and_timm_int8(report):
    from deit.deploy.quantize import INT8_LOGIT_BOUND

    rows = {m.impl: m for m in report.measurements if m.task == "deploy"}
    assert set(rows) == {"ours", "timm", "ours_int8", "timm_int8"}  # deploy_compile=False here
    assert rows["timm"].max_abs_diff_vs_ours < 1e-5
    assert 0 < rows["ours_int8"].max_abs_diff_vs_ours <= INT8_LOGIT_BOUND
    assert 0 < rows["timm_int8"].max_abs_diff_vs_ours <= INT8_LOGIT_BOUND
    assert rows["ours_int8"].flops_per_image == rows["ours"].flops_per_image  # the same function, counted eagerly
    ratios = report.ratios()
    assert ratios["deploy/fp32/ours_int8_over_timm"] == pytest.approx(
        rows["ours_int8"].images_per_s / rows["timm"].images_per_s)
    assert "deploy/fp32/ours_int8_over_timm_int8" in ratios


@pytest.mark.slow
def test_deploy_task_with_compiled_models():
    cfg = BenchmarkConfig(**{**SMALL, "repeats": 1, "deploy_compile": True}, modes=("fp32",), tasks=("deploy",))
    report = run_benchmark(cfg, log=lambda _: None)
    rows = {m.impl: m for m in report.measurements}
    assert {"ours_compiled", "timm_compiled"} <= set(rows)
    assert rows["ours_compiled"].max_abs_diff_vs_ours < 1e-4 and rows["timm_compiled"].max_abs_diff_vs_ours < 1e-4
    assert "deploy/fp32/ours_compiled_over_timm_compiled" in report.ratios()
