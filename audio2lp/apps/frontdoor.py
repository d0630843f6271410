"""What every front door does the same way: set up the process (CPU memory, logging), add a command's options
to its parser (from :mod:`audio2lp.options`), build the :class:`~audio2lp.Animator` from the runtime options, and
turn errors into one ``error:`` line and an exit code.

This module must not import torch at import time: :func:`prepare_process` runs before it is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from audio2lp import options
from audio2lp.options import CLI, Option, OptionError
from lp_renderer.errors import InputError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
NOISY_LOGGERS = ("numba", "matplotlib", "PIL", "urllib3", "httpx", "h5py")


def prepare_process() -> None:
    """The renderer's CPU memory settings (:mod:`lp_renderer.fast.cpu_memory`), first thing, before torch loads."""
    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()


def setup_logging(args) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else \
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s" if level > logging.DEBUG else
                        "%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def message(error: InputError) -> str:
    """An InputError as the command line words it (options as flags)."""
    return error.describe(CLI) if isinstance(error, OptionError) else str(error)


def animator(args):
    """The :class:`~audio2lp.Animator` of the runtime options in ``args``."""
    from audio2lp.api import Animator

    return Animator(args.weights, device=None if args.device == "auto" else args.device, half=args.half,
                    compile=args.compile, face_backend=args.face_backend, insightface_dir=args.insightface_dir,
                    batch_size=args.batch_size, progress=not args.quiet,
                    backend=getattr(args, "backend", "pytorch"), onnx_dir=getattr(args, "onnx_dir", None))


def run(command: Callable[[], int | None], *, interrupted: str = "interrupted; no partial output was kept",
        interrupt_code: int = EXIT_INTERRUPTED) -> int:
    """Run ``command`` as a command line does: user-fixable problems (a missing GPU, running out of GPU memory
    included) print ``error: ...`` and return 2, Ctrl-C returns ``interrupt_code``, running out of memory 1. Anything
    else is a bug and keeps its traceback."""
    try:
        return int(command() or 0)
    except InputError as e:
        print(f"error: {message(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        return interrupt_code
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1
    except Exception as e:
        if not _gpu_out_of_memory(e):
            raise
        print("error: the GPU ran out of memory; use a smaller --batch-size, free the GPU's memory (close other "
              "programs that use it), or use --device cpu", file=sys.stderr, flush=True)
        return EXIT_USAGE


def _gpu_out_of_memory(error: BaseException) -> bool:
    """PyTorch's CUDA out-of-memory error (checked without importing torch: it is only raised once torch runs)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(error, oom)


def add_arguments(parser, command: str, *, skip: tuple[str, ...] = (), group_titles: Mapping[str, str] | None = None,
                  defaults: Mapping[str, Any] | None = None) -> None:
    """Add the options of ``command`` to an argparse ``parser`` (types are parsed there; ranges are checked where
    the values are used, so that every front door reports them alike). ``defaults`` overrides shown defaults
    (e.g. the port of one command)."""
    defaults = dict(defaults or {})
    runtime = ("weights", "device", "half", "compile", "batch_size", "face_backend", "insightface_dir", "quiet",
               "verbose", "backend", "onnx_dir")
    group = parser.add_argument_group("runtime")
    for o in options.options_for(command):
        if o.name in skip:
            continue
        target = group if o.name in runtime else parser
        default = defaults.get(o.name, o.default)
        flags = [o.cli_flag] + (["--" + o.name] if o.flag in ("-q", "-v") else [])
        kw: dict[str, Any] = {"dest": o.name, "help": _cli_help(o, default)}
        if o.kind == "bool":
            if o.nullable:
                kw.update(action=argparse.BooleanOptionalAction, default=default)
                flags = ["--" + o.name.replace("_", "-")]
            elif o.default is True:
                kw.update(action="store_false")
            else:
                kw.update(action="store_true")
        else:
            kw.update(default=default, type=_CLI_TYPES[o.kind], metavar=o.metavar)
            if o.choices is not None:
                kw.update(choices=list(o.choices), metavar=None)
        target.add_argument(*flags, **kw)
    for o in options.OPTIONS.values():
        if command in o.refused_by and o.name not in skip:  # accepted by the parser, refused by refuse_options
            parser.add_argument(o.cli_flag, dest=o.name, default=None, type=str, help=argparse.SUPPRESS)


def sliders(args, command: str) -> dict[str, Any]:
    """The editing sliders of ``command`` from parsed ``args`` (keywords of the Animator's method)."""
    return {name: getattr(args, name) for name in options.sliders_for(command)}


def refuse_options(args, command: str) -> None:
    """Raise the :class:`OptionError` of the first option ``command`` refuses (``Option.refused_by``) that ``args``
    sets."""
    for o in options.OPTIONS.values():
        if command in o.refused_by and getattr(args, o.name, None) is not None:
            raise OptionError(o.name, o.refusal)


def _cli_help(o: Option, default: Any) -> str:
    if o.kind == "bool" or default is None or "default" in o.help:
        return o.help
    return f"{o.help} (default {default})"


def _face_type(value: str):
    try:
        return options.parse_face(value)
    except OptionError as e:
        raise argparse.ArgumentTypeError(e.describe(CLI)) from None


_CLI_TYPES: dict[str, Callable[[str], Any]] = {"float": float, "int": int, "str": str, "path": str,
                                              "face": _face_type}
