"""``audio2lp export onnx OUT_DIR``: the command line of :mod:`audio2lp.onnx_export`."""

from __future__ import annotations

from audio2lp.apps.frontdoor import add_arguments

# onnx, onnxruntime and torch are imported when the command runs, not when the parser is built


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export the renderer's networks (ONNX)",
                       description="Export the LivePortrait networks of the weights folder to other formats.")
    esub = p.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    o = esub.add_parser(
        "onnx", help="write F, M, W, G and the stitching / retargeting networks as ONNX files (dynamic batch)",
        description="Load the weights (strictly, as speak and drive do), fold spectral norm and BatchNorm into "
                    "the convolutions (exact up to float rounding) and write one ONNX file per network (opset 20, "
                    "batch dimension dynamic) with a manifest.json into OUT_DIR. Run them with `speak` / `drive "
                    "--backend onnxruntime --onnx-dir OUT_DIR`, or with onnxruntime / TensorRT directly. Needs "
                    'the onnx extra (pip install -e ".[onnx]").')
    o.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing; files in it are replaced)")
    add_arguments(o, "export onnx")
    o.set_defaults(run=run_export_onnx)


def run_export_onnx(args) -> int:
    from audio2lp.onnx_export import export_weights
    from audio2lp.weights_store import resolve_weights_dir, weights_hint

    with weights_hint(args.weights):
        files = export_weights(resolve_weights_dir(args.weights), args.out_dir)
    for path in files:
        print(f"wrote {path}")
    return 0
