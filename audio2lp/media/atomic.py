"""The one atomic writer: every file audio2lp and its trainers write goes to a hidden temporary file in the
destination folder (``.NAME.part-XXXXXXXX.SUFFIX``, the same suffix so that tools pick the right format) and is
renamed onto the destination only when it is complete; on any failure, Ctrl-C included, the temporary file is
removed and the destination is left as it was. :func:`check_output_path` validates a destination before any
expensive work.

(:mod:`lp_renderer.weights` keeps the one atomic write of its own, for safetensors files: the renderer package
must not import this one.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from audio2lp.errors import VideoError


def _output_folder(path: Path) -> Path:
    folder = path.absolute().parent
    if not folder.exists():
        raise VideoError(f"The output folder {folder} does not exist; create it or choose another "
                         "output path.")
    if not folder.is_dir():
        raise VideoError(f"{folder} is not a folder; choose an output path inside an existing folder.")
    if path.is_dir():
        raise VideoError(f"The output path {path} is a folder; give a file name such as "
                         f"{path / 'out.mp4'}.")
    return folder


def _create_exclusive(folder: Path, name: str) -> Path:
    """Create an empty file ``folder/name`` (mode 0666 minus umask); fail if it exists."""
    target = folder / name
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    os.close(fd)
    return target


def check_output_path(path: str | os.PathLike,
                      suffixes: Sequence[str] | None = (".mp4",)) -> Path:
    """Validate an output file path before any expensive work and return it as a Path.

    Checks that the suffix is one of ``suffixes`` (case-insensitive; None accepts any), that the
    path is not a folder, that its folder exists, and that a file can be created there (by
    creating and removing a hidden probe file).

    Raises:
        VideoError: with one sentence saying what is wrong and what to do.
    """
    p = Path(path).expanduser()
    if suffixes:
        allowed = tuple(s.lower() for s in suffixes)
        if p.suffix.lower() not in allowed:
            names = " or ".join(allowed)
            raise VideoError(f"The output file {p.name or p} must end in {names}; choose a name "
                             f"like {(p.stem or 'output') + allowed[0]}.")
    folder = _output_folder(p)
    try:
        probe = _create_exclusive(folder, f".{p.name}.writetest-{secrets.token_hex(4)}")
        probe.unlink()
    except OSError as exc:
        raise VideoError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); "
                         "choose a folder you can write to.") from exc
    return p


class AtomicFile:
    """A hidden temporary file next to ``path``, renamed onto ``path`` by :meth:`commit`."""

    def __init__(self, path: str | os.PathLike, tag: str = "part"):
        self.path = Path(path).expanduser()
        folder = _output_folder(self.path)
        name = f".{self.path.name}.{tag}-{secrets.token_hex(4)}{self.path.suffix}"
        try:
            self.tmp = _create_exclusive(folder, name)
        except OSError as exc:
            raise VideoError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); "
                             "choose a folder you can write to.") from exc

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, make_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path`` (``.NAME.part-XXXXXXXX.SUFFIX``, with
    the same suffix so ffmpeg picks the right muxer); it is renamed onto ``path`` when the block
    ends normally and deleted when it raises (KeyboardInterrupt included).

    The temporary file already exists (empty) when the block starts; write over it (ffmpeg
    needs ``-y``).

    ``make_folder`` creates the destination's folder first (caches, run folders).

    Raises:
        VideoError: the folder of ``path`` is missing or not writable, or ``path`` is a folder.
    """
    if make_folder:
        Path(path).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    part = AtomicFile(path)
    try:
        yield part.tmp
    except BaseException:
        part.discard()
        raise
    try:
        part.commit()
    except BaseException:
        part.discard()
        raise
