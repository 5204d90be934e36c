"""Export a trained run as a TF SavedModel or a TFLite model, proven equal to its checkpoint.

    python fcn_export.py --traindir tmp/20240131_mobilenet_v1__1 --format savedmodel --out exp/sm
    python fcn_export.py --traindir tmp/... --format tflite --quantize int8 --out exp/int8

The export is checked on --check_images validation images against the
checkpoint before it is renamed into --out (see utils/export.py for what each
format takes and returns); `fcn_test.py --model DIR` scores it like a run.
"""
import os
import sys

from utils.cli import (CheckedArgumentParser, add_checkpoint_flags, add_gpu_flag, bounded,
                       check_checkpoint_flags, select_gpu)
from utils.errors import run_main
from utils.export import DEFAULT_CHECK_IMAGES, FORMATS, QUANTIZATIONS, export_run
from utils.prediction import PIXELS_AS_TRAINED, TrainedRun


def _check_flag_combinations(parser, args):
    check_checkpoint_flags(parser, args)
    allowed = FORMATS[args.format].quantizations
    if args.quantize not in allowed:
        parser.error(f"--quantize {args.quantize} does not apply to --format {args.format} "
                     f"(choose from: {', '.join(allowed)})")


def build_parser():
    parser = CheckedArgumentParser(
        prog="fcn_export.py", check=_check_flag_combinations,
        description="Export a trained run to a TF SavedModel (any image size, sizing and "
                    "preprocessing inside) or a TFLite model (fixed size, optionally float16 "
                    "or int8), checked against the checkpoint on validation images.")
    parser.add_argument("--traindir", required=True,
                        help="run folder made by fcn_train.py (e.g. tmp/20240131_mobilenet_v1__1)")
    add_checkpoint_flags(parser)
    parser.add_argument("--format", required=True, choices=list(FORMATS),
                        help="savedmodel: serving signature for TF / TF Serving; "
                             "tflite: model.tflite for phones and embedded CPUs")
    parser.add_argument("--quantize", choices=list(QUANTIZATIONS), default="none",
                        help="tflite only: none (float32), float16 weights, or int8 (full "
                             "integer, calibrated on the run's training images) "
                             "(default: %(default)s)")
    parser.add_argument("--pixels", type=bounded(int, low=PIXELS_AS_TRAINED),
                        default=PIXELS_AS_TRAINED,
                        help="network input size: -1 as in training (default), >0 larger side "
                             "scaled to it; 0 (native size) for savedmodel only")
    parser.add_argument("--out", required=True,
                        help="output folder: must not exist or be empty")
    parser.add_argument("--datapath", default=None,
                        help="root of the converted datasets (default: the run's own); the "
                             "check reads val images, int8 calibration training images")
    parser.add_argument("--check_images", type=bounded(int, low=1), default=DEFAULT_CHECK_IMAGES,
                        help="validation images the export is checked on "
                             "(default: %(default)s)")
    add_gpu_flag(parser)
    return parser


def main(args):
    select_gpu(args.gpu)
    run = TrainedRun(args.traindir, args.datapath)
    checkpoint = run.checkpoint(args.afteriter, best=args.best)
    export_run(run, checkpoint, args.format, args.quantize, args.pixels, args.out,
               args.check_images)
    print(f"exported {os.path.basename(checkpoint.prefix)} (step {checkpoint.step}) as "
          f"{args.format}{'' if args.quantize == 'none' else ' ' + args.quantize} to {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
