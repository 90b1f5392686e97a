"""Published weights through a real HTTP server on 127.0.0.1 (never the internet): download
with progress and checksum into the cache, corrupted files, 404, dropped connections, offline
reuse, no network at all, and the lookup order in front of the download."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading

import pytest
import torch

from deit import MissingCheckpointError, create_model, save_model
from deit.cli import main
from deit.models import registry
from deit.models.pretrained import WeightFile
from deit.weights.hub import ChecksumError, DownloadError, mirrored, resolve_pretrained_file

NAME = "deit_pico_distilled_patch4_32"  # tiny; no published weights, so tests give it some


class _Handler(http.server.BaseHTTPRequestHandler):
    def _headers(self) -> bytes | None:
        self.server.requests.append(f"{self.command} {self.path}")
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if "/resolve/" in self.path:  # what the Hugging Face hub answers: the commit and the file's digest
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        return body

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self._headers()

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self._headers()
        if body is None:
            return
        if self.path in self.server.drop:  # half the body, then the connection goes away
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.drop, self.httpd.requests = {}, set(), []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, body: bytes, *, drop: bool = False) -> str:
        self.httpd.files[path] = body
        if drop:
            self.httpd.drop.add(path)
        return self.base + path

    @property
    def requests(self) -> list[str]:
        return [r.split(" ", 1)[1] for r in self.httpd.requests if r.startswith("GET ")]

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("DEIT_OFFLINE")  # conftest keeps every other test offline
    srv = Server()
    yield srv
    srv.stop()


def _weights_file(tmp_path) -> tuple[bytes, torch.nn.Module]:
    model = create_model(NAME, num_classes=1000)
    path = save_model(model, tmp_path / "published.safetensors")
    return path.read_bytes(), model


def _published(url: str, body: bytes, *, digest: str | None = "prefix") -> WeightFile:
    sha = hashlib.sha256(body).hexdigest()
    sha = sha[:8] if digest == "prefix" else sha if digest == "full" else digest
    return WeightFile(url=url, hf_hub_id=None, file_name=url.rsplit("/", 1)[1], sha256=sha, layout="official")


def _cache_files(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize("digest", ["prefix", "full"])
def test_download_goes_into_the_cache_verified_with_progress(server, tmp_path, capsys, digest):
    body, _ = _weights_file(tmp_path)
    weight = _published(server.serve("/w/pico-1.safetensors", body), body, digest=digest)
    cache = tmp_path / "cache"
    path = resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=True)
    assert path == cache / "pico-1.safetensors" and path.read_bytes() == body
    assert _cache_files(cache) == ["pico-1.safetensors"]  # no temporary file left behind
    assert "pico-1.safetensors" in capsys.readouterr().err  # tqdm's bar on stderr


def test_checksum_mismatch_is_an_error_and_leaves_the_cache_clean(server, tmp_path):
    """The real configuration of deit_tiny_patch16_224 through a mirror serving other bytes."""
    server.serve("/deit/deit_tiny_patch16_224-a1311bcf.pth", b"not the published weights")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as err:
        resolve_pretrained_file("deit_tiny_patch16_224", cache_dir=cache, mirror=server.base, progress=False)
    got = hashlib.sha256(b"not the published weights").hexdigest()
    message = str(err.value)
    assert f"{server.base}/deit/deit_tiny_patch16_224-a1311bcf.pth" in message
    assert "expected sha256 a1311bcf" in message and f"got {got}" in message
    assert _cache_files(cache) == []
    assert server.requests == ["/deit/deit_tiny_patch16_224-a1311bcf.pth"]  # no fallback after a bad file


def test_404_is_one_line_naming_url_cache_and_the_manual_way(server, tmp_path):
    weight = WeightFile(url=server.base + "/missing.pth", hf_hub_id=None, file_name="missing.pth", sha256=None,
                        layout="official")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=False)
    message = str(err.value)
    assert "\n" not in message and "HTTP 404" in message
    assert server.base + "/missing.pth" in message and str(cache / "missing.pth") in message
    assert "--checkpoint FILE" in message and _cache_files(cache) == []


def test_dropped_connection_keeps_nothing(server, tmp_path):
    body = bytes(range(256)) * 512
    weight = _published(server.serve("/drop.pth", body, drop=True), body, digest=None)  # no checksum to catch it
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=rf"could not download {server.base}/drop.pth \(connection closed "
                                            rf"after {len(body) // 2} of {len(body)} bytes\)"):
        resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=False)
    assert _cache_files(cache) == []


def test_second_call_uses_the_cache_offline(server, tmp_path, monkeypatch):
    body, _ = _weights_file(tmp_path)
    weight = _published(server.serve("/w/pico-2.safetensors", body), body)
    cache = tmp_path / "cache"
    first = resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=False)
    server.stop()
    assert resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=False) == first
    monkeypatch.setenv("DEIT_OFFLINE", "1")
    assert resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache) == first
    assert server.requests == ["/w/pico-2.safetensors"]


def test_no_network_at_all_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DEIT_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/deit/x-00000000.pth"
    weight = WeightFile(url=url, hf_hub_id=None, file_name="x-00000000.pth", sha256="00000000", layout="official")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        resolve_pretrained_file(NAME, weights=[weight], cache_dir=cache, progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"could not download {url} (no connection:")
    assert str(cache / "x-00000000.pth") in message and "--checkpoint FILE" in message


def test_offline_setting_fails_in_one_line_naming_url_and_cache(tmp_path):
    """conftest sets DEIT_OFFLINE=1: the real configuration, nothing local, no download tried."""
    with pytest.raises(MissingCheckpointError) as err:
        create_model("deit_small_distilled_patch16_224", pretrained=True, checkpoint_dir=tmp_path,
                     cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "$DEIT_OFFLINE is set" in message
    assert "https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth" in message
    assert str(tmp_path / "cache" / "deit_small_distilled_patch16_224-649709d9.pth") in message
    assert str(tmp_path / "deit_small_distilled_patch16_224.safetensors") in message


def test_lookup_order_explicit_then_checkpoint_dir_then_cache_then_download(server, tmp_path):
    body, _ = _weights_file(tmp_path)
    weight = _published(server.serve("/w/pico-3.safetensors", body), body)
    local, cache = tmp_path / "local", tmp_path / "cache"
    local.mkdir()
    cache.mkdir()
    (cache / "pico-3.safetensors").write_bytes(body)
    (local / "pico-3.safetensors").write_bytes(body)
    (local / f"{NAME}.pth").write_bytes(body)
    explicit = tmp_path / "explicit.safetensors"
    explicit.write_bytes(body)

    def resolve(**kw):
        return resolve_pretrained_file(NAME, weights=[weight], checkpoint_dir=local, cache_dir=cache, **kw)

    assert resolve(checkpoint=explicit) == explicit
    assert resolve() == local / f"{NAME}.pth"
    (local / f"{NAME}.pth").unlink()
    assert resolve() == local / "pico-3.safetensors"  # the published name in the checkpoint dir
    (local / "pico-3.safetensors").unlink()
    assert resolve() == cache / "pico-3.safetensors"
    assert server.requests == []
    (cache / "pico-3.safetensors").unlink()
    assert resolve(progress=False) == cache / "pico-3.safetensors" and server.requests == ["/w/pico-3.safetensors"]
    with pytest.raises(MissingCheckpointError, match="checkpoint file not found: .*nope.pth"):
        resolve(checkpoint=tmp_path / "nope.pth")


def test_falls_back_to_the_next_published_copy(server, tmp_path):
    body, _ = _weights_file(tmp_path)
    gone = WeightFile(url=server.base + "/gone.pth", hf_hub_id=None, file_name="gone.pth", sha256=None,
                      layout="official")
    copy = _published(server.serve("/copy.safetensors", body), body)
    path = resolve_pretrained_file(NAME, weights=[gone, copy], cache_dir=tmp_path / "c", progress=False)
    assert path.name == "copy.safetensors" and server.requests == ["/gone.pth", "/copy.safetensors"]


def test_mirror_keeps_the_path():
    url = "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth"
    assert mirrored(url, "http://mirror.corp/weights/") == "http://mirror.corp/weights/deit/deit_tiny_patch16_224-a1311bcf.pth"
    assert mirrored(url, "") == url
    hub = WeightFile(url=None, hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k", file_name="t.safetensors", sha256=None,
                     layout="timm")
    assert hub.download_url == "https://huggingface.co/timm/deit_tiny_patch16_224.fb_in1k/resolve/main/model.safetensors"


def _publish(server, monkeypatch, tmp_path, name: str, **build) -> torch.nn.Module:
    """Give ``name`` one published file on the test server (its configuration patched)."""
    model = create_model(name, **build)
    body = save_model(model, tmp_path / f"{name}.upload.safetensors").read_bytes()
    weight = _published(server.serve(f"/deit/{name}-x.safetensors", body), body)
    cfg = dataclasses.replace(registry.get_pretrained_cfg(name), weights=(weight,))
    monkeypatch.setitem(registry._PRETRAINED, name, cfg)
    return model


@pytest.fixture
def published_pico(server, tmp_path, monkeypatch):
    """NAME with one published file on the test server; its model; the cache folder."""
    monkeypatch.setenv("DEIT_CACHE", str(tmp_path / "cache"))
    return _publish(server, monkeypatch, tmp_path, NAME, num_classes=1000), tmp_path / "cache"


def test_create_model_pretrained_downloads_then_loads(published_pico, server):
    model, cache = published_pico
    loaded = create_model(NAME, pretrained=True, progress=False)
    assert (cache / f"{NAME}-x.safetensors").is_file()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


@pytest.mark.slow
def test_cli_predict_model_pretrained(published_pico, server, tmp_path, capsys):
    """``--model NAME --pretrained`` predicts exactly as ``--checkpoint`` with the downloaded file."""
    import json

    import numpy as np
    from PIL import Image

    _, cache = published_pico
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--model", NAME, "--pretrained", "--json", str(image)]) == 0
    via_hub = json.loads(capsys.readouterr().out)
    assert server.requests == [f"/deit/{NAME}-x.safetensors"]
    file = cache / f"{NAME}-x.safetensors"
    assert main(["predict", "--checkpoint", str(file), "--model", NAME, "--json", str(image)]) == 0
    assert via_hub == json.loads(capsys.readouterr().out) and len(via_hub[0]["top"]) == 5
    server.stop()  # the cache answers now
    assert main(["predict", "--model", NAME, "--pretrained", "--json", str(image)]) == 0
    assert json.loads(capsys.readouterr().out) == via_hub


def test_cli_predict_pretrained_needs_a_model_name(capsys):
    assert main(["predict", "--pretrained", "x.png"]) == 2
    assert "--pretrained takes the weights of --model NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_train_finetune_name_and_teacher_pretrained(published_pico, server, tmp_path, monkeypatch, caplog):
    """``--finetune NAME`` starts from NAME's published file (adapted to 10 grey classes at 16 px);
    ``--teacher-pretrained`` loads the teacher's published file; both fetched from the server."""
    import logging

    from deit.train.run import train
    from deit.train.settings import load_config

    _publish(server, monkeypatch, tmp_path, "deit_pico_patch4_32", num_classes=10, in_channels=1, image_size=16)
    settings = dict(dataset="digits", image_size=16, batch_size=32, progress=False, model_ema=False, mixup=0.0,
                    cutmix=0.0, reprob=0.0, auto_augment=None, warmup_epochs=0, repeated_aug=1, epochs=1,
                    train_subset=64, val_subset=64, model=NAME, finetune=NAME, teacher_model="deit_pico_patch4_32",
                    teacher_pretrained=True, distillation_type="soft", output=str(tmp_path / "run"))
    with caplog.at_level(logging.INFO, logger="deit"):
        result = train(load_config(None, settings))
    assert sorted(server.requests) == ["/deit/deit_pico_distilled_patch4_32-x.safetensors",
                                       "/deit/deit_pico_patch4_32-x.safetensors"]
    assert "finetune:" in caplog.text and result.final["train_distillation_loss"] > 0


def test_finetune_url_and_unknown_values(server, tmp_path):
    from deit.weights.hub import resolve_weights_argument, weight_from_url

    body = b"weights" * 100
    prefix = hashlib.sha256(body).hexdigest()[:8]
    url = server.serve(f"/release/model-{prefix}.pth", body)
    assert weight_from_url(url).sha256 == prefix and weight_from_url(url).file_name == f"model-{prefix}.pth"
    path = resolve_weights_argument(url, flag="--finetune", progress=False)
    assert path.read_bytes() == body and path.name == f"model-{prefix}.pth"
    server.serve("/release/bad-0123abcd.pth", body)
    with pytest.raises(ChecksumError, match="expected sha256 0123abcd"):
        resolve_weights_argument(server.base + "/release/bad-0123abcd.pth", flag="--finetune", progress=False)
    with pytest.raises(MissingCheckpointError, match="--finetune nope.pth: no such file, and not a registered"):
        resolve_weights_argument("nope.pth", flag="--finetune")


def test_teacher_pretrained_needs_a_teacher():
    from deit.train.settings import TrainConfig

    with pytest.raises(ValueError, match="teacher_pretrained=True needs a teacher: set --teacher-model"):
        TrainConfig(teacher_pretrained=True).validate()


# --- copies hosted on the Hugging Face hub: huggingface_hub and its shared cache ----------------

HUB_ID = "timm/deit_pico_distilled_patch4_32.test"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty shared Hugging Face cache, as ``HF_HUB_CACHE`` would name it."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def _hub_weight() -> WeightFile:
    return WeightFile(url=None, hf_hub_id=HUB_ID, file_name="pico.safetensors", sha256=None, layout="timm")


def test_a_hub_copy_is_fetched_by_huggingface_hub_then_found_offline_in_its_cache(server, hf_cache, tmp_path,
                                                                                  monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    body, model = _weights_file(tmp_path)
    server.serve(f"/{HUB_ID}/resolve/main/model.safetensors", body)
    ours = tmp_path / "deit-cache"
    path = resolve_pretrained_file(NAME, weights=[_hub_weight()], cache_dir=ours, mirror=server.base)
    assert path.read_bytes() == body and hf_cache in path.parents  # the hub's own cache layout
    assert _cache_files(ours) == []  # nothing duplicated into ours
    loaded = create_model(NAME, num_classes=1000, checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # a timm user's cache serves us offline: no request, whatever DEIT_OFFLINE and HF_HUB_OFFLINE say
    server.stop()
    monkeypatch.setenv("DEIT_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_pretrained_file(NAME, weights=[_hub_weight()], cache_dir=ours) == path


def test_a_hub_copy_the_hub_cannot_give_is_one_line(server, hf_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub's own offline switch
    with pytest.raises(DownloadError, match=f"could not download {HUB_ID}/model.safetensors from the Hugging Face "
                                            "hub") as caught:
        resolve_pretrained_file(NAME, weights=[_hub_weight()], cache_dir=tmp_path / "deit-cache", mirror=server.base)
    assert "\n" not in str(caught.value) and server.requests == []
