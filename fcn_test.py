"""Evaluate a trained run, or segment photos and videos with it.

    python fcn_test.py --traindir tmp/20240131_mobilenet_v1__1            # scores on 'val'
    python fcn_test.py --traindir tmp/... --afteriter 3000 --save_predictions
    python fcn_test.py --traindir tmp/... --best     # fcn.ckpt_best of a --keep_best run
    python fcn_test.py --traindir tmp/... --imagepath photos/ --moviepath street.mp4
    python fcn_test.py --traindir tmp/... --pixels 0 --scales 0.75 1 1.25 --flip --tile 512 512
    python fcn_test.py --model exports/int8/model.tflite       # an fcn_export.py export

The network is rebuilt from the run's `runargs`, and its dataset is read from
the run's datapath (or --datapath, when the data has moved). Scores come from one confusion
matrix summed over every image of the split at its source resolution, with a
95% bootstrap interval of mIoU over images; everything lands in --outdir
(default <traindir>/test_<split>_<step>[_<test-time settings>]): metrics.json,
confusion.csv, confusion.png, per_image.csv, viz/ (and viz/worst/), predictions/
(see utils/evaluation.py). --scales/--flip/--tile (utils/tta.py) apply to
splits, images and videos alike. With --imagepath/--moviepath the run segments
those instead of a split. With --model, an export made by fcn_export.py
(SavedModel folder or .tflite) predicts instead of the run's checkpoint, at the
size it was exported for (utils/export.py: ExportedRun); outputs default to its
folder.
"""
import os
import sys
import time

from tqdm import tqdm

from utils.cli import (CheckedArgumentParser, add_checkpoint_flags, add_gpu_flag, bounded,
                       check_checkpoint_flags, select_gpu)
from utils.datasets import SPLIT_FILES
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, first_line, run_main
from utils.evaluation import Drawing, default_outdir, evaluate_split, print_metrics
from utils.export import ExportedRun
from utils.files import disk_full_errors
from utils.prediction import PIXELS_AS_TRAINED, Segmenter, TrainedRun, check_split
from utils.run_folder import describe_start_weights
from utils.tta import DEFAULT_OVERLAP
from utils.visualization import (VideoReader, VideoWriter, colorize, image_files, overlay,
                                 read_rgb, save_png)

# Flags that only mean something when a split is scored.
SPLIT_ONLY_FLAGS = ("split", "batch_size", "first2viz", "last2viz")
# Flags of a run's checkpoint and size, which an export fixed when it was made.
RUN_ONLY_FLAGS = ("afteriter", "best", "pixels")


def _check_flag_combinations(parser, args):
    if (args.traindir is None) == (args.model is None):
        parser.error("pass either --traindir (a training run) or --model (an export)")
    if args.model:
        given = [name for name in RUN_ONLY_FLAGS if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"--{', --'.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                         f"to --traindir; an export runs as it was exported")
    check_checkpoint_flags(parser, args)
    if args.overlap != parser.get_default("overlap") and not args.tile:
        parser.error("--overlap only applies to sliding windows: add --tile H W")
    if args.first2viz > args.last2viz:
        parser.error(f"--first2viz {args.first2viz} is after --last2viz {args.last2viz}: "
                     f"images first2viz .. last2viz-1 are drawn")
    if args.imagepath or args.moviepath:
        given = [name for name in SPLIT_ONLY_FLAGS if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"--{', --'.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                         f"when scoring a split, not with --imagepath/--moviepath")
        if args.save_predictions and not args.imagepath:
            parser.error("--save_predictions writes class-id PNGs of a split or of --imagepath "
                         "images, not of a --moviepath video")


def build_parser():
    parser = CheckedArgumentParser(
        prog="fcn_test.py", check=_check_flag_combinations,
        description="Score a trained run on a dataset split (mIoU with a 95% bootstrap "
                    "interval, per-class IoU, confusion matrix, pictures), or segment "
                    "images and videos with it.")
    parser.add_argument("--traindir", default=None,
                        help="run folder made by fcn_train.py (e.g. tmp/20240131_mobilenet_v1__1)")
    parser.add_argument("--model", default=None,
                        help="instead of --traindir: a SavedModel folder or .tflite file made by "
                             "fcn_export.py, scored or run the same way")
    add_checkpoint_flags(parser)
    parser.add_argument("--split", choices=sorted(SPLIT_FILES), default="val",
                        help="split to score (default: %(default)s)")
    parser.add_argument("--datapath", default=None,
                        help="root of the converted datasets (default: the run's own, from its "
                             "runargs); for data that moved since training")
    parser.add_argument("--pixels", type=bounded(int, low=PIXELS_AS_TRAINED),
                        default=PIXELS_AS_TRAINED,
                        help="network input size: -1 as in training (default; native size for "
                             "runs trained with --crop), 0 each image at its native size, >0 "
                             "larger side scaled to it")
    parser.add_argument("--scales", type=bounded(float, low=0, low_inclusive=False), nargs="+",
                        default=[1.0], metavar="S",
                        help="test-time augmentation: one pass per scale factor of the --pixels "
                             "size, softmax averaged at the image's size (default: 1)")
    parser.add_argument("--flip", action="store_true",
                        help="test-time augmentation: also a mirrored pass at each scale")
    parser.add_argument("--tile", type=bounded(int, low=1), nargs=2, default=None,
                        metavar=("H", "W"),
                        help="sliding windows of H x W network-input pixels, blended with "
                             "weights falling off towards their borders (for images larger "
                             "than the net was trained on; default: whole images)")
    parser.add_argument("--overlap", type=bounded(float, low=0, high=1, high_inclusive=False),
                        default=DEFAULT_OVERLAP, metavar="F",
                        help="fraction of a window shared with its neighbour, with --tile "
                             "(default: %(default)s)")
    parser.add_argument("--first2viz", type=bounded(int, low=0), default=0,
                        help="first image index drawn as image | prediction | truth (default: 0)")
    parser.add_argument("--last2viz", type=bounded(int, low=0), default=4,
                        help="draw images first2viz .. last2viz-1 (default: 4; 0 draws none)")
    parser.add_argument("--imagepath", default=None,
                        help="segment this image, or every image of this folder, instead of a split")
    parser.add_argument("--moviepath", default=None,
                        help="segment every frame of this video into an overlay mp4")
    parser.add_argument("--outdir", default=None,
                        help="output folder (default: <traindir or the --model folder>/"
                             "test_<split|images|movie>_<step>)")
    parser.add_argument("--save_predictions", action="store_true",
                        help="write each prediction as a single-channel PNG of class ids at the "
                             "image's source size into <outdir>/predictions/")
    parser.add_argument("--batch_size", type=bounded(int, low=1), default=1,
                        help="images per network run when scoring a split (default: 1)")
    add_gpu_flag(parser)
    return parser


def make_outdir(args, source, step, plan, home):
    """--outdir (or its default in `home`, the run's or the export's folder), created;
    SegMentorError naming the flag when it cannot be."""
    outdir = args.outdir or default_outdir(home, source, step, plan)
    try:
        os.makedirs(outdir, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        where = "--outdir" if args.outdir else f"the default --outdir inside {home}"
        raise SegMentorError(f"cannot write to {outdir}, {where} ({first_line(err)}); "
                             f"pass another --outdir") from None
    return outdir


# --- Segmenting photos and videos -----------------------------------------------------------

def segment_images(segmenter, spec, paths, outdir, save_predictions):
    """Coloured prediction and overlay per image (plus class ids with save_predictions)."""
    start = time.perf_counter()
    for path in tqdm(paths, desc="segmenting images", unit="img"):
        image = read_rgb(path)
        prediction = segmenter.segment(image)
        colored = colorize(prediction, spec.colors, IGNORE_LABEL)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_png(colored, os.path.join(outdir, f"{stem}_prediction.png"))
        save_png(overlay(image, colored), os.path.join(outdir, f"{stem}_overlay.png"))
        if save_predictions:
            save_png(prediction, os.path.join(outdir, "predictions", f"{stem}.png"))
    rate = len(paths) / max(time.perf_counter() - start, 1e-9)
    print(f"segmented {len(paths)} image(s) at {rate:.1f} images/s into {outdir}")


def segment_movie(segmenter, spec, reader, outdir):
    """Overlay video <outdir>/<name>_overlay.mp4; prints the segmentation frame rate."""
    stem = os.path.splitext(os.path.basename(reader.path))[0]
    out_path = os.path.join(outdir, f"{stem}_overlay.mp4")
    seconds = 0.0
    with VideoWriter(out_path, reader.fps, reader.width, reader.height) as writer:
        for frame in tqdm(reader, total=reader.num_frames or None, desc="segmenting video",
                          unit="frame"):
            start = time.perf_counter()
            prediction = segmenter.segment(frame)
            seconds += time.perf_counter() - start
            writer.write(overlay(frame, colorize(prediction, spec.colors, IGNORE_LABEL)))
    print(f"segmented {writer.num_frames} frames of {reader.width}x{reader.height} at "
          f"{writer.num_frames / max(seconds, 1e-9):.1f} fps (network + resize) -> {out_path}")


def main(args):
    select_gpu(args.gpu)  # before the first session, which is when TF claims devices
    if args.model:
        run = ExportedRun(args.model, args.datapath)
        home = run.folder
    else:
        run = TrainedRun(args.traindir, args.datapath)
        home = args.traindir
    checkpoint = run.checkpoint(args.afteriter, best=args.best)
    # A bad --pixels and data that cannot be found fail before any graph is built.
    pixels = run.eval_pixels(args.pixels)
    plan = run.inference_plan(pixels, args.scales, args.flip, args.tile, args.overlap)
    segmenting = args.imagepath or args.moviepath
    # An export carries its classes and colours: segmenting photos with one needs no dataset.
    spec = run.classes() if args.model and segmenting else run.dataset()
    origin = None if args.model else describe_start_weights(run.runargs)
    if origin:
        print(origin)
    if segmenting:
        # Open every input first: a bad path fails before the network is built.
        paths = image_files(args.imagepath) if args.imagepath else []
        movie = VideoReader(args.moviepath) if args.moviepath else None
        try:
            source = "images" if args.imagepath else "movie"
            outdir = make_outdir(args, source, checkpoint.step, plan, home)
            with disk_full_errors(outdir, "the test outputs"), \
                    run.predictor(checkpoint) as predictor:
                segmenter = Segmenter(predictor, plan)
                if paths:
                    segment_images(segmenter, spec, paths, outdir, args.save_predictions)
                if movie:
                    segment_movie(segmenter, spec, movie, outdir)
        finally:
            if movie:
                movie.close()
        return
    check_split(spec, run.datapath, args.split)
    outdir = make_outdir(args, args.split, checkpoint.step, plan, home)
    with disk_full_errors(outdir, "the test outputs"), run.predictor(checkpoint) as predictor:
        metrics = evaluate_split(
            predictor, spec, run.datapath, args.split, plan, outdir, args.batch_size,
            Drawing(range(args.first2viz, args.last2viz), args.save_predictions),
            extra=dict(step=checkpoint.step, checkpoint=os.path.basename(checkpoint.prefix),
                       pixels=pixels,
                       **({"model": os.path.abspath(args.model)} if args.model else {})))
    print_metrics(metrics)
    print(f"{metrics['num_images']} images at {metrics['images_per_sec']:.1f} images/s "
          f"(decoding, network, scoring and pictures)")
    print(f"outputs in {outdir}")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
