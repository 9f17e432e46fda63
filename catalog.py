"""Named datasets and image pairs: the manifest (datasets.json) with pinned URLs and
checksums, where each set is found ($SR_DATA_ROOT, the cache, a verified download), and the
HR/LR pairs of a set, folder or union of sets."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from images import IMAGE_SUFFIXES, list_images
from utils import DatasetError, first_line

# ---------------------------------------------------------------------------------------
# Named datasets: resolution, manifest, download
# ---------------------------------------------------------------------------------------

BENCHMARKS = ("T91", "BSD200", "Set5", "Set14", "BSD100", "Urban100")
SAMPLE_SETS = ("sample", "sample-train", "sample-test")
UNIONS = {"291": ("T91", "BSD200")}  # VDSR's and FSRCNN's training set
SCENE_SETS = ("PROBAV-sample",)  # multi-frame scenes in the PROBA-V challenge's layout (bursts.py)
MANIFEST_PATH = Path(__file__).with_name("datasets.json")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named dataset: where it lives under the set root, and how to get it."""

    path: str
    url: str
    size: int
    sha256: str


def manifest_files(name: str, scale: int | None) -> list[RemoteFile]:
    """Files of a named dataset (for one scale when the set has per-scale folders)."""
    entry = json.loads(MANIFEST_PATH.read_text())["sets"][name]
    files = entry.get("files")
    if files is None:
        key = f"x{scale}"
        if key not in entry["files_by_scale"]:
            have = ", ".join(sorted(entry["files_by_scale"]))
            raise DatasetError(f"{name} has no scale x{scale} (it has {have})")
        files = entry["files_by_scale"][key]
    return [RemoteFile(f["path"], f["url"], f["bytes"], f["sha256"]) for f in files]


def canonical_name(name: str) -> str | None:
    """The benchmark's canonical spelling ('set5' -> 'Set5'), or None for other names."""
    for known in BENCHMARKS + SCENE_SETS:
        if name.lower() == known.lower():
            return known
    return None


def cache_dir() -> Path:
    """Per-user folder for downloaded datasets ($SR_CACHE_DIR, else the XDG cache)."""
    if os.environ.get("SR_CACHE_DIR"):
        return Path(os.environ["SR_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "srkit"


def _set_folder(root: Path, name: str, scale: int | None) -> Path:
    """Where a set's images for `scale` live under a root (T91 has no per-scale folders; a
    scene set is one folder of scene folders)."""
    if name in SCENE_SETS:
        return root / name
    files = manifest_files(name, scale)
    return root / Path(files[0].path).parent


def _complete(root: Path, files: Sequence[RemoteFile]) -> bool:
    """True when every file is present under root with its expected size."""
    return all((root / f.path).is_file() and (root / f.path).stat().st_size == f.size for f in files)


def resolve_dataset(
    name: str,
    scale: int | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Folder holding the images of a dataset given by name or path.

    Order: `name` as an existing folder (with an `x<scale>` subfolder if it has one);
    `<data_root or $SR_DATA_ROOT>/<name>`; the per-user cache; else a verified download
    into the cache.
    """
    as_path = Path(name).expanduser()
    if as_path.is_dir():
        scaled = as_path / f"x{scale}"
        return scaled if scale is not None and scaled.is_dir() else as_path
    canonical = canonical_name(name)
    if canonical is None:
        known = ", ".join(BENCHMARKS + SCENE_SETS + tuple(UNIONS) + SAMPLE_SETS)
        raise DatasetError(f"{name}: no such folder, and not a known dataset ({known})")
    root = data_root or os.environ.get("SR_DATA_ROOT")
    if root:
        for folder in (
            _set_folder(Path(root).expanduser(), canonical, scale),
            Path(root).expanduser() / canonical,
        ):
            if folder.is_dir() and (
                list_images(folder) or canonical in SCENE_SETS and any(folder.rglob("LR*.png"))
            ):
                return folder
    files = manifest_files(canonical, scale)
    cache = cache_dir()
    if _complete(cache, files):
        return _set_folder(cache, canonical, scale)
    target = _set_folder(cache, canonical, scale)
    if not download:
        raise DatasetError(_missing_message(canonical, root, target))
    try:
        fetch_files(files, cache, progress=progress)
    except DatasetError as err:
        raise DatasetError(f"{err}. {_missing_message(canonical, root, target)}") from None
    return target


def _missing_message(name: str, root: str | os.PathLike | None, target: Path) -> str:
    """How to provide a dataset by hand when it cannot be downloaded."""
    where = f"$SR_DATA_ROOT ({root})" if root else "$SR_DATA_ROOT (unset)"
    return (
        f"{name} is not in {where} nor in the cache; put its images in {target} "
        f"or set SR_DATA_ROOT to a folder holding {name}/ (see README, 'Datasets')"
    )


def fetch_files(files: Sequence[RemoteFile], root: Path, progress: bool = True) -> None:
    """Download the missing files under root, verifying size and SHA-256 of each."""
    from tqdm import tqdm

    missing = [
        f for f in files if not ((root / f.path).is_file() and (root / f.path).stat().st_size == f.size)
    ]
    total = sum(f.size for f in missing)
    with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
        for remote in missing:
            download_file(remote, root / remote.path, bar.update)


def download_file(remote: RemoteFile, dest: Path, on_bytes: Callable[[int], object] = lambda n: None) -> Path:
    """Fetch one file to dest via `dest.part`, resuming a cut transfer; verify, then rename.

    A file only ever appears under its final name after its size and SHA-256 match, so
    an interrupted or corrupted transfer never passes as complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    if have < remote.size:  # a complete .part (killed before its check) needs no request
        _transfer(remote, part, have, on_bytes)
    size = part.stat().st_size
    if size != remote.size:
        if size > remote.size:
            part.unlink()
        raise DatasetError(
            f"download of {remote.url} incomplete ({size} of {remote.size} bytes); run again to resume"
        )
    digest = _sha256(part)
    if digest != remote.sha256:
        part.unlink()
        raise DatasetError(f"download of {remote.url} has SHA-256 {digest}, expected {remote.sha256}")
    os.replace(part, dest)
    return dest


DOWNLOAD_DEADLINE_S = 900.0  # one file, however slowly its server sends it


def _transfer(remote: RemoteFile, part: Path, have: int, on_bytes: Callable[[int], object]) -> None:
    """Append the rest of a file to `part` from byte `have` (Range request), or rewrite it whole.

    Before a byte is kept, the answer must not be a web page (an HTML login or error page
    served with status 200) and its announced length must be what the manifest
    leaves; no more than the manifest's size is ever written; the transfer gives up after
    DOWNLOAD_DEADLINE_S (what arrived stays in `part` for the next run to resume).
    """
    url = remote.url
    request = urllib.request.Request(url, headers={"User-Agent": "srkit"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
    watchdog = _Watchdog(DOWNLOAD_DEADLINE_S)
    opener = urllib.request.build_opener(_WatchedHTTP(watchdog), _WatchedHTTPS(watchdog))
    try:
        with watchdog, opener.open(request, timeout=60) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            _check_answer(remote, response, remote.size - have)
            with open(part, "ab" if have else "wb") as out:
                written, left = 0, remote.size - have
                while chunk := response.read1(1 << 16):
                    written += len(chunk)
                    if written > left:
                        out.close()
                        part.unlink(missing_ok=True)
                        raise DatasetError(
                            f"download of {url} sends more than the manifest's {remote.size} bytes"
                        )
                    out.write(chunk)
                    on_bytes(len(chunk))
                    if time.monotonic() > deadline:
                        raise DatasetError(
                            f"download of {url} still unfinished after {DOWNLOAD_DEADLINE_S:.0f} s "
                            f"({have + written} of {remote.size} bytes); run again to resume"
                        )
                out.flush()
                os.fsync(out.fileno())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        if not watchdog.fired:
            raise DatasetError(f"download of {url} failed ({first_line(err)})") from None
    if watchdog.fired:  # the answer was cut short at the deadline, wherever it was
        raise DatasetError(
            f"download of {url} still unfinished after {DOWNLOAD_DEADLINE_S:.0f} s; run again to resume"
        )


class _Watchdog:
    """Shuts the connections it is given once `seconds` have passed, so that no answer, not even
    headers sent a byte at a time (each within the socket timeout), outlasts the deadline."""

    def __init__(self, seconds: float) -> None:
        self.connections: list[http.client.HTTPConnection] = []
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()

    def watch(self, connection_class: type) -> Callable[..., http.client.HTTPConnection]:
        """A factory of `connection_class` connections that this watchdog will shut."""

        def connect(*args: object, **kwargs: object) -> http.client.HTTPConnection:
            connection = connection_class(*args, **kwargs)
            self.connections.append(connection)
            return connection

        return connect

    def _fire(self) -> None:
        self.fired = True
        for connection in self.connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTP(urllib.request.HTTPHandler):
    """urllib's HTTP handler, its connections under a watchdog."""

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.watchdog.watch(http.client.HTTPConnection), req)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    """urllib's HTTPS handler, its connections under a watchdog."""

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.watchdog.watch(http.client.HTTPSConnection), req, context=self._context)


def _check_answer(remote: RemoteFile, response: http.client.HTTPResponse, expected: int) -> None:
    """Refuse an answer that is a page, or announces another length than the manifest leaves."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):  # (raw file hosts serve data as text/plain)
        raise DatasetError(
            f"download of {remote.url}: the server sent a {kind} page, not the file "
            "(a login, error or moved page?); nothing kept"
        )
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) != expected:
        raise DatasetError(
            f"download of {remote.url}: the server announces {length} bytes where the manifest "
            f"leaves {expected}; nothing kept"
        )


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Image pairs
# ---------------------------------------------------------------------------------------

# The photos that ship inside scikit-image: training data and a held-back test set with
# no network. The test set has one grayscale image, as Set14 does.
SAMPLE_IMAGES = {
    "train": ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png"),
    "test": ("chelsea.png", "camera.png"),
}


def sample_paths(split: str = "all") -> list[Path]:
    """Paths of the photos bundled with scikit-image ('train', 'test' or 'all')."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    names = SAMPLE_IMAGES["train"] + SAMPLE_IMAGES["test"] if split == "all" else SAMPLE_IMAGES[split]
    paths = [folder / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"scikit-image lacks its bundled photos {missing} in {folder}")
    return paths


def set_names(name: str) -> list[str]:
    """The sets a training-data name stands for: '291' -> T91, BSD200; 'T91,my/folder' -> both."""
    if Path(name).expanduser().is_dir():
        return [name]
    if name in UNIONS:
        return list(UNIONS[name])
    parts = [part.strip() for part in name.split(",")]
    if len(parts) > 1 and not all(parts):
        raise DatasetError(f"{name!r}: an empty name in the list")
    return [each for part in parts for each in set_names(part)] if len(parts) > 1 else parts


def paired_folders(folder: Path) -> tuple[Path, Path] | None:
    """(hr, lr) subfolders of a folder of pairs from two sensors (`hr/` and `lr/`, either case),
    or None."""
    found = {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and p.name.lower() in ("hr", "lr")}
    return (found["hr"], found["lr"]) if len(found) == 2 else None


def matched_pairs(hr_folder: Path, lr_folder: Path) -> list[tuple[Path, Path]]:
    """(HR, LR) images of an `hr/` and an `lr/` folder matched by name; an image without its
    partner is a DatasetError naming it."""
    hr_paths = {p.stem: p for p in list_images(hr_folder)}
    lr_paths = {p.stem: p for p in list_images(lr_folder)}
    for stem in sorted(set(hr_paths) ^ set(lr_paths)):
        alone = hr_paths.get(stem) or lr_paths[stem]
        other = lr_folder if stem in hr_paths else hr_folder
        raise DatasetError(f"{alone}: no image named {stem}.* in {other} (pairs are matched by name)")
    if not hr_paths:
        raise DatasetError(f"{hr_folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(hr_paths[stem], lr_paths[stem]) for stem in sorted(hr_paths)]


def dataset_sources(
    name: str,
    scale: int,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> list[tuple[Path, Path | None]]:
    """(HR path, given LR path or None) for every image of a named set or folder, or of a
    union of them ('291', 'T91,BSD200', 'T91,my/folder')."""
    names = set_names(name)
    if len(names) > 1:
        return [
            source for part in names for source in dataset_sources(part, scale, data_root, download, progress)
        ]
    if name in SAMPLE_SETS:
        split = {"sample": "all", "sample-train": "train", "sample-test": "test"}[name]
        return [(p, None) for p in sample_paths(split)]
    folder = resolve_dataset(name, scale, data_root=data_root, download=download, progress=progress)
    halves = paired_folders(folder)
    if halves is not None:
        return matched_pairs(*halves)
    paths = list_images(folder)
    hr_paths = [p for p in paths if re.search(r"_HR$", p.stem)]
    if hr_paths:
        pairs = []
        for hr in hr_paths:
            lr = next((p for p in paths if p.stem == hr.stem[:-2] + "LR"), None)
            if lr is None:
                raise DatasetError(f"{hr}: no matching *_LR image beside it")
            pairs.append((hr, lr))
        return pairs
    if not paths:
        raise DatasetError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(p, None) for p in paths]
