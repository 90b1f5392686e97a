"""The content-keyed teacher memo: the live teacher's logits, the teacher run once per distinct view."""
from __future__ import annotations

import pytest
import torch

from deit import create_model
from deit.distill.memo import TeacherMemo, view_digests, views_repeat
from deit.train.settings import TrainConfig, load_config


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    model = create_model("resnet8_32", num_classes=10, in_channels=1).eval()
    model.forward_calls = []
    model.register_forward_hook(lambda m, args, out: m.forward_calls.append(args[0].shape[0]))
    return model


def test_targets_are_the_live_teachers_logits_and_each_view_runs_once(teacher):
    memo = TeacherMemo(teacher, num_classes=10)
    views = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        live = teacher(views)
    teacher.forward_calls.clear()
    first = memo.targets(views[:4])
    again = memo.targets(torch.cat([views[2:4], views[4:]]))  # two known views, two new ones
    torch.testing.assert_close(first, live[:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, live[2:], atol=1e-5, rtol=1e-5)
    assert teacher.forward_calls == [4, 2]  # the known views cost nothing
    assert memo.stats() == {"hits": 2, "misses": 6, "distinct_views": 6, "teacher_forwards_saved": 0.25}
    memo.targets(views)
    assert teacher.forward_calls == [4, 2]  # a batch of known views runs no teacher forward


def test_a_flipped_view_is_another_view(teacher):
    memo = TeacherMemo(teacher, num_classes=10)
    image = torch.rand(1, 1, 28, 28)
    memo.targets(image)
    memo.targets(image.flip(-1))
    assert memo.misses == 2 and memo.hits == 0
    assert len(set(view_digests(torch.cat([image, image.flip(-1), image.clone()])))) == 2


def test_memory_bound_keeps_serving_new_views_live(teacher):
    memo = TeacherMemo(teacher, num_classes=10)
    memo.max_bytes = 3 * memo.bytes_per_view  # room for three views
    views = torch.rand(5, 1, 28, 28)
    out = memo.targets(views)
    assert memo.stats()["distinct_views"] == 3 and memo.stored_bytes <= memo.max_bytes
    with torch.no_grad():
        torch.testing.assert_close(out, teacher(views), atol=1e-5, rtol=1e-5)
    memo.targets(views)
    assert memo.hits == 3 and memo.misses == 7  # the two views without room ran again


def test_views_repeat_only_without_random_augmentation():
    small = load_config(None, {"recipe": "small-data", "dataset": "digits"}).to_dict()
    paper = TrainConfig().to_dict()  # the paper's recipe (Table 9)
    assert views_repeat(small)
    assert not views_repeat(dict(small, scale=[0.5, 1.0]))
    assert not views_repeat(dict(small, mixup=0.8))
    assert not views_repeat(dict(small, auto_augment="rand-m9-mstd0.5-inc1"))
    assert not views_repeat(paper)


@pytest.mark.slow
def test_a_distilled_run_with_the_memo_trains_as_with_the_live_teacher(tmp_path):
    """digits, whole images (no flip for digits): in epoch 2 the teacher runs only on the
    images that epoch 1's loader dropped with its last partial batch."""
    import json

    from deit.train.run import train
    from deit.weights.files import load_training_checkpoint

    common = dict(dataset="digits", image_size=16, batch_size=64, progress=False, model_ema=False, epochs=2,
                  recipe="small-data", model="deit_pico_distilled_convstem_patch8_28", teacher_model="resnet8_32",
                  distillation_type="hard")
    teacher_run = train(load_config(None, dict(common, model="resnet8_32", teacher_model=None,
                                               distillation_type="none", output=str(tmp_path / "teacher"))))
    common["teacher_checkpoint"] = str(teacher_run.output / "best.pth")
    memo = train(load_config(None, dict(common, output=str(tmp_path / "memo"))))
    live = train(load_config(None, dict(common, teacher_memo=False, output=str(tmp_path / "live"))))
    stats = json.loads((tmp_path / "memo" / "summary.json").read_text())["teacher_memo"]
    images, per_epoch = 1437, (1437 // 64) * 64  # digits' training split; the loader drops the last partial batch
    assert stats["hits"] + stats["misses"] == 2 * per_epoch
    assert stats["distinct_views"] == stats["misses"] <= images  # the teacher ran once per image at most
    assert stats["hits"] >= per_epoch - (images - per_epoch)  # epoch 2: only the images epoch 1 dropped are new
    assert "teacher_memo" not in json.loads((tmp_path / "live" / "summary.json").read_text())
    assert memo.final["val_acc1"] == live.final["val_acc1"]
    ours, theirs = (load_training_checkpoint(tmp_path / run / "last.pth")["model"] for run in ("memo", "live"))
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5)
