"""Plumbing shared by the scripts: error types, command lines, atomic writes, random state."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# ---------------------------------------------------------------------------------------
# Errors: one type per kind of user error; the CLIs print them as one line and exit 2.
# ---------------------------------------------------------------------------------------


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class ImageError(UserError):
    """An image file that is missing, unreadable, truncated, too large or of the wrong kind."""


class DatasetError(UserError):
    """A dataset that cannot be found, downloaded, verified or that holds no usable images."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or of the wrong kind."""


# ---------------------------------------------------------------------------------------
# Command-line plumbing
# ---------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2, for every CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class Terminated(Exception):
    """SIGTERM arrived: the command unwinds (open writes remove their temporaries) and exits 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler of every CLI: unwind instead of dying mid-write."""
    raise Terminated()


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI's main: user errors become one line on stderr and exit status 2; SIGTERM and
    Ctrl-C unwind (nothing half-written is left) and exit 143 and 130."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        return 0
    except (MemoryError, RuntimeError) as err:  # torch's CPU allocator raises RuntimeError
        if not isinstance(err, MemoryError) and not is_out_of_memory(err):
            raise
        print(f"error: out of memory ({first_line(err) or 'MemoryError'}); "
              "a smaller input or --tile needs less", file=sys.stderr)  # fmt: skip
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception is an allocation failure (CPU or GPU), not a bug."""
    text = str(err)
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text


def memory_available() -> int | None:
    """Bytes this process can still allocate: the least of free memory (MemAvailable), its
    cgroup's limit less usage, and its address-space limit less what it maps; None if unknown."""
    room = []
    fields = _proc_fields("/proc/meminfo")
    if "MemAvailable" in fields:
        room.append(fields["MemAvailable"])
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    mapped = _proc_fields("/proc/self/status").get("VmSize")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        room.append(soft - mapped)
    return max(min(room), 0) if room else None


def _proc_fields(path: str) -> dict[str, int]:
    """`Name: N kB` lines of a /proc file, in bytes (empty where the file is absent)."""
    fields = {}
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return fields


# ---------------------------------------------------------------------------------------
# Atomic writes: a file appears complete under its name, or not at all
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, fsync it and
    rename it to `path`. It is removed in every case. A failing write raises UserError naming
    the file. The temporary name is hidden and ends in `.tmp`, so that a process killed
    mid-write never leaves a file that looks like a checkpoint or an image (writers must not
    infer the format from the name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot write {what} ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)


def clear_stale_temporaries(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Remove the hidden `.NAME.PID.tmp` files `atomic_write` left in `folder` when a process
    was killed mid-write (their PID no longer runs), of every file or only of `name`; returns
    what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this PID runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder (`.lock` inside it, flock), held while this object lives:
    a second training run into the same folder is refused instead of mixing their files."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self.file = open(self.path, "a+")  # noqa: SIM115 (held for the run)
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(
                f"{folder}: in use by another training run ({owner}); wait for it, or give another --out-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        """Give the lock up (closing the file releases the flock)."""
        self.file.close()


def check_writable(path: str | os.PathLike) -> None:
    """Raise UserError unless a file can be written at `path` now: its folder exists, and it is
    not a folder itself nor an existing read-only file (a rename would replace that silently)."""
    path = Path(path)
    try:
        _check_writable(path)
    except OSError as err:  # a name too long for the file system, a path through a file...
        raise UserError(f"{path}: cannot write a file there ({err.strerror or err})") from None


def _check_writable(path: Path) -> None:
    """check_writable's tests, which may raise OSError for a path that cannot exist."""
    if len(os.fsencode(path.name)) > 255:
        raise UserError(f"{path.name[:60]}...: a file name longer than 255 bytes")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file name")
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    if path.exists() and not (os.access(path, os.W_OK) and path.stat().st_mode & stat.S_IWUSR):
        raise UserError(f"{path}: exists and is read-only; not replaced")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: folder {path.parent} is not writable")


def check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, an output that is an input or another output, that
    exists (unless `overwrite`), is a folder or read-only, or sits in a missing folder."""
    taken = {path.resolve() for path in inputs}  # inputs, then each output as it is checked
    for output in outputs:
        check_writable(output)
        if output.resolve() in taken:
            raise UserError(f"{output}: is an input of this command, or another of its outputs; name another")
        if output.exists() and not output.is_dir() and not overwrite:
            raise UserError(f"{output}: exists; --overwrite replaces it (nothing was written)")
        taken.add(output.resolve())
        clear_stale_temporaries(output.parent, output.name)  # left by a run killed writing it


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create an output folder and prove a file can be written there, or fail with one line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{folder}: cannot write to this output folder ({err.strerror or err})") from None
    return folder


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def brief(value: object) -> str:
    """A value as one short line for an error message (a tensor by its type and shape)."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__} ({text[:30]!r}...)"


def first_line(err: BaseException) -> str:
    """First line of an exception message, or its type name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------
# Random state
# ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as plain types and tensors that weights_only loading accepts."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is there)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
