"""``litzoo export``: the deploy model of a ``litzoo fit`` checkpoint as ONNX, TorchScript, int8 or int8 ONNX, verified."""

from __future__ import annotations

from collections.abc import Sequence

from litzoo.cli.console import command_parser


def export_command(argv: Sequence[str]) -> None:
    from litzoo.framework.export import FORMATS, export_checkpoint, export_checkpoint_onnx_int8, exported_files

    parser = command_parser("litzoo export", "Export the deploy (fused) model of a `litzoo fit` checkpoint and verify it against torch.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `litzoo fit` (best, last or deploy)")
    parser.add_argument(
        "--format", type=str, default="onnx", choices=FORMATS,
        help="onnx (checked with onnxruntime), torchscript, int8 (post-training quantized torch.export program, calibrated on the training data), "
        "or onnx-int8 (QDQ int8 ONNX quantized by onnxruntime, calibrated on the training data)",
    )  # fmt: skip
    parser.add_argument("--output", type=str, default=None, help="output file (default: next to the checkpoint)")
    parser.add_argument("--batch_size", type=int, default=8, help="images in the verification batch")
    parser.add_argument("--input_shape", type=list[int], default=None, help="C,H,W of random inputs, instead of the checkpoint's datamodule")
    parser.add_argument("--atol", type=float, default=None, help="allowed max abs difference, relative to max(1, max|y|) (default 1e-4; int8 and onnx-int8 0.1)")
    parser.add_argument("--calibration_batches", type=int, default=32, help="int8, onnx-int8: training batches that calibrate the activation ranges")
    args = parser.parse_args(list(argv))
    if args.output is not None:  # before loading and verifying the model, not after
        from litzoo.framework.data.staging import check_writable

        check_writable(args.output)
    shape = tuple(args.input_shape) if args.input_shape else None
    if args.format == "onnx-int8" and shape is None:  # prints the int8 figures: agreement with float and torch int8
        check = export_checkpoint_onnx_int8(args.ckpt_path, args.output, args.batch_size, args.atol, args.calibration_batches)
        print(f"exported onnx-int8 to {check.path}; {check.summary()}")
        return
    output, error = export_checkpoint(args.ckpt_path, args.format, args.output, args.batch_size, shape, args.atol, args.calibration_batches)
    beside = [str(f) for f in exported_files(output) if f != output]  # an ONNX model over 2 GB keeps its weights beside it
    files = f"{output}" + (f" (+ {', '.join(beside)})" if beside else "")
    print(f"exported {args.format} to {files}; max |exported - torch| = {error:.3g} on {args.batch_size} images")
