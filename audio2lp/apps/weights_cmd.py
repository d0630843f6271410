"""``audio2lp weights download | import | convert``: the command line of :mod:`audio2lp.weights_store`."""

from __future__ import annotations

from audio2lp.apps.frontdoor import add_arguments

# the weights library (audio2lp.weights_store) imports torch: it is loaded when a command runs, not when the
# parser is built


def add_weights_parser(sub) -> None:
    p = sub.add_parser("weights", help="get, import, check or convert the LivePortrait weights",
                       description="Manage the LivePortrait weights folder (official pretrained_weights layout).")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    add_weights_download_parser(wsub)
    add_weights_import_parser(wsub)
    c = wsub.add_parser("convert", help="convert an official weights folder to safetensors (pickle-free, faster)",
                        description="Load every official .pth file strictly and write .safetensors files next to "
                                    "them (or under --out in the same layout). They are preferred from then on.")
    c.add_argument("dir", nargs="?", help="weights folder (default: the configured one)")
    c.add_argument("--out", metavar="DIR", help="write the safetensors here instead of next to the .pth files")
    add_arguments(c, "weights")
    c.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from audio2lp.weights_store import resolve_weights_dir
    from lp_renderer.weights import convert_to_safetensors

    for path in convert_to_safetensors(resolve_weights_dir(args.dir), args.out):
        print(f"wrote {path}")
    return 0


def _print_report(report, verb: str) -> None:
    from audio2lp.weights_store import default_weights_dir
    from lp_renderer.weights import OFFICIAL_FILES

    print(f"{verb} {report.weights_dir}")
    for f in report.files:
        print(f"  {f.describe()}")
    for line in report.extra_files:
        print(f"  {line}")
    for p in report.converted:
        print(f"  wrote {p}")
    unknown = [OFFICIAL_FILES[f.key] for f in report.files if f.hash_status == "unknown"]
    if unknown:
        print(f"note: {', '.join(unknown)} could not be hash-checked (no recorded SHA-256); "
              f"they were verified by loading them strictly.")
    if report.missing:
        print(f"warning: {', '.join(report.missing)} not found; `speak` (lip retargeting) and stitching need it.")
    default = default_weights_dir()
    if report.weights_dir.expanduser().resolve() != default.expanduser().resolve():
        print(f"use it with --weights {report.weights_dir} (or set $AUDIO2LP_WEIGHTS)")


def add_weights_download_parser(weights_sub) -> None:
    """Register ``download`` under the ``audio2lp weights`` sub-parsers."""
    p = weights_sub.add_parser(
        "download", help="download the official LivePortrait weights from the Hugging Face hub",
        description="Download the five official LivePortrait files (four base models and the stitching/"
                    "retargeting module) from the Hugging Face hub into the weights folder, with progress. "
                    "Interrupted downloads resume where they stopped. Each file is checked against its "
                    "recorded SHA-256 and loaded strictly into its network before it is put in place. Files "
                    "already present are kept when they are the official ones (or differ but load strictly, e.g. a "
                    "fine-tune; --force replaces them).")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit of the repository (default main)")
    p.add_argument("--force", action="store_true",
                   help="download every file again, replacing the ones present (even correct ones or fine-tunes)")
    p.add_argument("--safetensors", action="store_true",
                   help="also write pickle-free .safetensors copies (faster loading; as `weights convert`)")
    add_arguments(p, "weights")
    add_arguments(p, "weights download")
    p.set_defaults(run=_run_download)


def _run_download(args) -> int:
    from audio2lp.weights_store import download_weights

    report = download_weights(args.weights, repo_id=args.repo, revision=args.revision, force=args.force,
                              safetensors=args.safetensors, progress=not args.quiet)
    _print_report(report, "weights ready in")
    return 0


def add_weights_import_parser(weights_sub) -> None:
    """Register ``import`` under the ``audio2lp weights`` sub-parsers."""
    p = weights_sub.add_parser(
        "import", help="import a LivePortrait weights folder you already have",
        description="Copy (or link) the official LivePortrait files from DIR into the weights folder, in the "
                    "official layout. DIR may be the pretrained_weights/ folder, its parent, or a folder that "
                    "directly holds the five .pth files. Every file is loaded strictly first and compared with "
                    "the official SHA-256 (a difference is reported, e.g. for a fine-tune).")
    p.add_argument("dir", metavar="DIR",
                   help="the folder holding the weights (pretrained_weights/, its parent, or the .pth files)")
    link = p.add_mutually_exclusive_group()
    link.add_argument("--hardlink", dest="mode", action="store_const", const="hardlink", default="copy",
                      help="hard-link the files instead of copying them (same drive only; no extra space)")
    link.add_argument("--symlink", dest="mode", action="store_const", const="symlink",
                      help="symlink to the files instead of copying them (DIR must stay where it is)")
    p.add_argument("--safetensors", action="store_true",
                   help="also write pickle-free .safetensors copies (faster loading; as `weights convert`)")
    add_arguments(p, "weights")
    p.set_defaults(run=_run_import)


def _run_import(args) -> int:
    from audio2lp.weights_store import import_weights

    report = import_weights(args.dir, args.weights, mode=args.mode, safetensors=args.safetensors)
    _print_report(report, "weights ready in")
    return 0
