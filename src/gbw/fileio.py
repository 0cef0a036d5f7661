"""Writing files safely: atomically, with the user's umask, and with errors that name the path.

Every file gbw writes (checkpoints, prepared labels, statistics, masks, configs, reports) goes
through :func:`atomic_write`: the data lands in a temporary file beside the target, is flushed
to disk, gets the permissions any other program's new file would get (``0o666 & ~umask``;
``tempfile.mkstemp`` alone would leave ``0o600``) and replaces the target in one rename. A crash
or a full disk mid-write leaves the previous file intact and, at worst, a ``.<name>.*.tmp`` file
that :func:`remove_stale_temps` deletes at the next start.

Standard library only (imported by ``gbw --help`` paths and by every layer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


class OutputError(OSError):
    """A file could not be written; the message names the path and the reason in one line."""


def describe_os_error(exc: OSError, path: str | Path, action: str = "writing") -> str:
    """One line for an OS error while ``action`` ``path`` (no space, read-only, permission)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while {action} {path}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while {action} {path}"
    if exc.errno == errno.EROFS:
        return f"read-only file system while {action} {path}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied while {action} {path}"
    return f"{exc.strerror or exc} while {action} {path}"


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``, if any: ``exc`` itself or one it was raised from
    (``torch.save`` reports a failed ``write`` as a ``RuntimeError`` whose context is the
    ``OSError``)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


_UMASK: int | None = None


def file_mode() -> int:
    """The mode a new regular file gets under the process umask (``0o666 & ~umask``)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = _read_umask()
    return 0o666 & ~_UMASK


def _read_umask() -> int:
    with contextlib.suppress(OSError, ValueError):  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # elsewhere os.umask can only be read by setting it; restore it at once
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, durable: bool = True, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``open_kwargs`` such as ``newline`` go to
    :func:`os.fdopen`). Missing parent folders are created. ``durable`` fsyncs the data before
    the rename (checkpoints, statistics); bulk outputs that a rerun recreates (label PNGs)
    skip it. Any ``OSError`` (no space left,
    read-only folder, permission) becomes an :class:`OutputError` naming ``path``; the
    temporary file is removed whatever happens.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        if mode == "w":
            open_kwargs.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except Exception as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise OutputError(cause.errno, describe_os_error(cause, path)) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dump_kwargs: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``indent=1`` unless given), ending in a
    newline like any text file."""
    dump_kwargs.setdefault("indent", 1)
    return write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted :func:`atomic_write` left in ``folder``.

    Only files of that exact pattern, directly in ``folder``, are touched. Returns them.
    """
    folder = Path(folder)
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed
