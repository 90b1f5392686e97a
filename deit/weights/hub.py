"""Published weights: find them locally, else download them once into a verified cache.

:func:`resolve_pretrained_file` answers "which file holds the published weights of this
variant?" in a fixed order, the first hit wins:

1. an explicit file (``checkpoint=`` / ``--checkpoint``);
2. the checkpoint directory (``checkpoint_dir=`` / ``$DEIT_CHECKPOINT_DIR``):
   ``<name>.safetensors|.pth|.pt``, or a published file name such as
   ``deit_small_distilled_patch16_224-649709d9.pth``; local only;
3. the download cache (``$DEIT_CACHE``, else ``$XDG_CACHE_HOME/deit``, else
   ``~/.cache/deit``), holding files under their published names;
4. for a copy hosted on the Hugging Face hub (timm's ``timm/<name>.<tag>`` repositories),
   the shared Hugging Face cache (``$HF_HUB_CACHE`` / ``$HF_HOME``), offline: a user who has
   loaded timm's weights already has them (``huggingface_hub.try_to_load_from_cache``);
5. the download, unless ``download=False`` or ``$DEIT_OFFLINE=1``: a file with its own URL
   (the official DeiT release) into our cache as below; a hub-only copy through
   ``huggingface_hub.hf_hub_download`` into the shared Hugging Face cache, which honours the
   hub's own ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``.

The download streams into a temporary file in the cache folder with a progress bar, checks
the byte count against ``Content-Length`` and the SHA-256 against the published digest,
then renames the file into place (atomic on one file system), so the cache never holds a
partial or corrupted file and a second call reuses it offline. The official DeiT release
names carry the first 8 hex digits of the SHA-256 (the ``torch.hub`` convention, checked by
facebookresearch/deit ``models.py`` with ``check_hash=True``); files that publish no digest
are checked for completeness only and their digest is logged. ``torch.hub``'s
``download_url_to_file`` is not used because it accepts a body cut short by a dropped
connection as a complete file.

``$DEIT_WEIGHTS_MIRROR`` (or ``mirror=``) replaces the scheme and host of every URL, keeping
its path: ``https://dl.fbaipublicfiles.com/deit/X.pth`` with mirror
``http://mirror.corp/weights`` is fetched from ``http://mirror.corp/weights/deit/X.pth``; for
a hub-hosted copy it is the hub endpoint (as ``HF_ENDPOINT``, which it overrides).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Sequence

from deit.core.errors import CheckpointError, ConfigError, MissingCheckpointError
from deit.models.pretrained import TIMM_HUB_FILE, WeightFile
from deit.models.registry import get_pretrained_cfg, list_models
from deit.weights.files import CHECKPOINT_SUFFIXES

logger = logging.getLogger("deit")

ENV_CACHE = "DEIT_CACHE"
ENV_MIRROR = "DEIT_WEIGHTS_MIRROR"
ENV_OFFLINE = "DEIT_OFFLINE"
ENV_CHECKPOINT_DIR = "DEIT_CHECKPOINT_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0


class DownloadError(MissingCheckpointError):
    """A published file could not be fetched (no network, HTTP error, connection dropped)."""


class ChecksumError(CheckpointError):
    """A downloaded file does not have its published SHA-256; nothing was kept."""


def default_checkpoint_dir(checkpoint_dir: str | os.PathLike | None = None) -> Path | None:
    """``checkpoint_dir`` if given, else ``$DEIT_CHECKPOINT_DIR``, else None."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir)
    env = os.environ.get("DEIT_CHECKPOINT_DIR")
    return Path(env) if env else None


def default_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$DEIT_CACHE``, else ``$XDG_CACHE_HOME/deit``, else ``~/.cache/deit``."""
    if path is not None:
        return Path(path)
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deit"


def offline() -> bool:
    """True when ``$DEIT_OFFLINE`` is set to a true value (1, true, yes)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def mirrored(url: str, mirror: str | None = None) -> str:
    """``url`` fetched through ``mirror`` (default ``$DEIT_WEIGHTS_MIRROR``): its path kept."""
    mirror = mirror if mirror is not None else os.environ.get(ENV_MIRROR)
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def _matches(digest: str, expected: str) -> bool:
    """Full digest or hex prefix, case-insensitive."""
    return digest.lower().startswith(expected.lower())


def download_weight(weight: WeightFile, directory: str | os.PathLike | None = None, *, progress: bool = True,
                    mirror: str | None = None) -> Path:
    """Download ``weight`` into ``directory`` (default :func:`default_cache_dir`) and return its path.

    Raises:
        DownloadError: no connection, an HTTP error or a body shorter than announced.
        ChecksumError: the file's SHA-256 differs from ``weight.sha256``.
        In both cases no file is left in ``directory``.
    """
    folder = default_cache_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / weight.file_name
    url = mirrored(weight.download_url, mirror)
    tmp = folder / f".{weight.file_name}.{uuid.uuid4().hex}.part"
    logger.info("downloading %s to %s", url, dest)
    try:
        digest = _fetch(url, tmp, progress=progress, label=weight.file_name)
        if weight.sha256 is not None and not _matches(digest, weight.sha256):
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {weight.sha256}, got {digest}; the download was "
                f"discarded (nothing written to {dest}). Try again, or check the mirror ({ENV_MIRROR}).")
        if weight.sha256 is None:
            logger.info("%s publishes no checksum; sha256 of the download: %s", url, digest)
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as err:
        raise DownloadError(f"could not download {url} ({_reason(err)}); {_by_hand(dest)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def hub_cached(weight: WeightFile) -> Path | None:
    """``weight``'s file in the shared Hugging Face cache, if it is there (no network)."""
    if not weight.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(weight.hf_hub_id, TIMM_HUB_FILE)
    return Path(found) if isinstance(found, str) else None


def download_from_hub(weight: WeightFile, *, mirror: str | None = None) -> Path:
    """Fetch a hub-hosted ``weight`` with ``huggingface_hub.hf_hub_download`` into the shared
    Hugging Face cache; ``mirror`` (default ``$DEIT_WEIGHTS_MIRROR``) is the hub endpoint.

    Raises:
        DownloadError: the hub could not give the file (no network, offline, HTTP error).
    """
    from huggingface_hub import hf_hub_download

    endpoint = mirror if mirror is not None else os.environ.get(ENV_MIRROR) or None
    where = f"{weight.hf_hub_id}/{TIMM_HUB_FILE} from the Hugging Face hub" + (f" at {endpoint}" if endpoint else "")
    logger.info("downloading %s", where)
    try:
        return Path(hf_hub_download(weight.hf_hub_id, TIMM_HUB_FILE, endpoint=endpoint))
    except Exception as err:  # huggingface_hub's HTTP, offline and connection errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(f"could not download {where} ({reason}); download it by hand and pass it with "
                            "--checkpoint FILE, or set HF_ENDPOINT to a reachable hub") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"no connection: {err.reason}"
    if isinstance(err, http.client.HTTPException) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}".rstrip(": ")


def _by_hand(dest: Path, url: str | None = None) -> str:
    what = url or "it"
    return (f"download {what} elsewhere and copy it to {dest} (or into ${ENV_CHECKPOINT_DIR}), "
            "or pass --checkpoint FILE")


def _fetch(url: str, tmp: Path, *, progress: bool, label: str) -> str:
    """Stream ``url`` into ``tmp``; the SHA-256 hex digest of the bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": "deit"})
    sha = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, label, progress)
        received = 0
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise http.client.HTTPException(f"connection closed after {received} of {total} bytes")
    return sha.hexdigest()


def _progress_bar(total: int | None, label: str, enabled: bool):  # -> tqdm | None
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=label, leave=False)


def _local_candidates(name: str, weights: Sequence[WeightFile], directory: Path) -> list[Path]:
    stems = [directory / f"{name}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    return stems + [directory / w.file_name for w in weights if directory / w.file_name not in stems]


def resolve_pretrained_file(name: str, *, checkpoint: str | os.PathLike | None = None,
                            checkpoint_dir: str | os.PathLike | None = None,
                            cache_dir: str | os.PathLike | None = None, download: bool | None = None,
                            progress: bool = True, mirror: str | None = None,
                            weights: Sequence[WeightFile] | None = None) -> Path:
    """The file holding the published weights of the registered variant ``name``.

    Args:
        checkpoint: an explicit file; returned when it exists.
        checkpoint_dir: local folder (default ``$DEIT_CHECKPOINT_DIR``).
        cache_dir: download cache (default :func:`default_cache_dir`).
        download: allow the download; default: yes unless ``$DEIT_OFFLINE`` is set.
        progress: show a progress bar while downloading.
        mirror: host replacing the published one (default ``$DEIT_WEIGHTS_MIRROR``).
        weights: the files to look for, in order of preference (default: the variant's
            published files from :func:`deit.models.registry.get_pretrained_cfg`).

    Raises:
        MissingCheckpointError: nothing found and no download possible (offline, or a
            variant without published weights); one line naming what was tried.
        DownloadError / ChecksumError: see :func:`download_weight`.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise MissingCheckpointError(f"checkpoint file not found: {path} (pretrained weights for {name!r})")
        return path
    if weights is None:
        weights = get_pretrained_cfg(name).weights
    local = checkpoint_dir if checkpoint_dir is not None else os.environ.get(ENV_CHECKPOINT_DIR) or None
    tried: list[Path] = []
    if local is not None:
        tried = _local_candidates(name, weights, Path(local))
        for path in tried:
            if path.is_file():
                return path
    where = f"; tried {', '.join(str(p) for p in tried)}" if tried else ""
    if not weights:
        raise MissingCheckpointError(
            f"{name!r} has no published weights{where}. Train it "
            f"(deit train --model {name} ...) and pass the file with --checkpoint FILE, or place it as "
            f"{name}.safetensors in a folder given by --checkpoint-dir / ${ENV_CHECKPOINT_DIR}")
    cache = default_cache_dir(cache_dir)
    for weight in weights:
        if (cache / weight.file_name).is_file():
            return cache / weight.file_name
    for weight in weights:
        shared = hub_cached(weight)
        if shared is not None:
            return shared
    primary = weights[0]
    dest = cache / primary.file_name
    url = mirrored(primary.download_url, mirror)
    if download is False or (download is None and offline()):
        why = f"${ENV_OFFLINE} is set" if download is None else "downloads are disabled"
        raise MissingCheckpointError(
            f"no local weights for {name!r} and {why}{where}; {_by_hand(dest, url)}")
    failures: list[DownloadError] = []
    for weight in weights:
        try:
            if weight.url is None and weight.hf_hub_id:
                return download_from_hub(weight, mirror=mirror)
            return download_weight(weight, cache, progress=progress, mirror=mirror)
        except DownloadError as err:
            failures.append(err)
    if len(failures) == 1:
        raise failures[0]
    others = ", ".join(mirrored(w.download_url, mirror) for w in weights[1:])
    raise DownloadError(f"{failures[0]} (also tried {others})")


def weight_from_url(url: str) -> WeightFile:
    """A published file known only by its URL; a ``-<hex>`` suffix in its name is the SHA-256
    prefix (``torch.hub``'s ``HASH_REGEX`` convention, the official DeiT release names)."""
    file_name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if not file_name:
        raise ConfigError(f"URL {url!r} names no file; expected e.g. https://host/path/weights-1a2b3c4d.pth")
    prefix = re.search(r"-([a-f0-9]{6,64})\.", file_name)
    return WeightFile(url=url, hf_hub_id=None, file_name=file_name, sha256=prefix.group(1) if prefix else None,
                      layout="official")


def resolve_weights_argument(value: str | os.PathLike, *, flag: str, checkpoint_dir: str | os.PathLike | None = None,
                             progress: bool = True) -> Path:
    """A weights argument as a user types it: an existing path; a registered name, meaning its
    published weights (:func:`resolve_pretrained_file`); or an ``http(s)://`` URL, downloaded
    into the cache like the official ``main.py --finetune URL``.

    Raises:
        MissingCheckpointError: none of those; the message names ``flag``.
    """
    text = os.fspath(value)
    if Path(text).exists():
        return Path(text)
    if text.startswith(("http://", "https://")):
        weight = weight_from_url(text)
        return resolve_pretrained_file(Path(weight.file_name).stem, weights=[weight], checkpoint_dir=checkpoint_dir,
                                       progress=progress)
    if text in list_models():
        return resolve_pretrained_file(text, checkpoint_dir=checkpoint_dir, progress=progress)
    raise MissingCheckpointError(f"{flag} {text}: no such file, and not a registered model name (deit list-models) "
                                 "or an http(s) URL; expected a weights file, a name such as "
                                 "deit_small_patch16_224 (its published weights) or a URL")
