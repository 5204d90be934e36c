"""Evaluate a trained run, or segment photos and videos with it.

    python fcn_test.py --traindir tmp/20240131_mobilenet_v1__1            # scores on 'val'
    python fcn_test.py --traindir tmp/... --afteriter 3000 --save_predictions
    python fcn_test.py --traindir tmp/... --best     # fcn.ckpt_best of a --keep_best run
    python fcn_test.py --traindir tmp/... --imagepath photos/ --moviepath street.mp4

The network is rebuilt from the run's `runargs`, and its dataset is read from
the run's datapath (or --datapath, when the data has moved). Scores come from one confusion
matrix summed over every image of the split at its source resolution, with a
95% bootstrap interval of mIoU over images; everything lands in --outdir
(default <traindir>/test_<split>_<step>): metrics.json, confusion.csv,
confusion.png, viz/, predictions/. With --imagepath/--moviepath the run
segments those instead of a split.
"""
import csv
import io
import json
import math
import os
import sys
import time

from tqdm import tqdm

from utils.cli import CheckedArgumentParser, add_gpu_flag, bounded, select_gpu
from utils.datasets import IGNORE_LABEL, SPLIT_FILES
from utils.errors import SegMentorError, first_line, run_main
from utils.files import write_text_atomic
from utils.inference import CONFIDENCE_LEVEL
from utils.prediction import PIXELS_AS_TRAINED, Segmenter, TrainedRun, score_split
from utils.visualization import (VideoReader, VideoWriter, colorize, confusion_heatmap_figure,
                                 image_files, overlay, read_rgb, save_figure, save_png,
                                 side_by_side_figure)

# Flags that only mean something when a split is scored.
SPLIT_ONLY_FLAGS = ("split", "batch_size", "first2viz", "last2viz")


def _check_flag_combinations(parser, args):
    if args.best and args.afteriter is not None:
        parser.error("--best and --afteriter each pick the checkpoint: give one")
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
    parser.add_argument("--traindir", required=True,
                        help="run folder made by fcn_train.py (e.g. tmp/20240131_mobilenet_v1__1)")
    parser.add_argument("--afteriter", type=bounded(int, low=0), default=None,
                        help="use snapshot fcn.ckpt_<N> (default: the newest intact checkpoint)")
    parser.add_argument("--best", action="store_true",
                        help="use fcn.ckpt_best, the best val mIoU of a run trained with "
                             "--keep_best")
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
    parser.add_argument("--first2viz", type=bounded(int, low=0), default=0,
                        help="first image index drawn as image | prediction | truth (default: 0)")
    parser.add_argument("--last2viz", type=bounded(int, low=0), default=4,
                        help="draw images first2viz .. last2viz-1 (default: 4; 0 draws none)")
    parser.add_argument("--imagepath", default=None,
                        help="segment this image, or every image of this folder, instead of a split")
    parser.add_argument("--moviepath", default=None,
                        help="segment every frame of this video into an overlay mp4")
    parser.add_argument("--outdir", default=None,
                        help="output folder (default: <traindir>/test_<split|images|movie>_<step>)")
    parser.add_argument("--save_predictions", action="store_true",
                        help="write each prediction as a single-channel PNG of class ids at the "
                             "image's source size into <outdir>/predictions/")
    parser.add_argument("--batch_size", type=bounded(int, low=1), default=1,
                        help="images per network run when scoring a split (default: 1)")
    add_gpu_flag(parser)
    return parser


def default_outdir(traindir, source, step):
    return os.path.join(traindir, f"test_{source}_{'latest' if step is None else step}")


def make_outdir(args, source, step):
    """--outdir (or its default), created; SegMentorError naming the flag when it cannot be."""
    outdir = args.outdir or default_outdir(args.traindir, source, step)
    try:
        os.makedirs(outdir, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        where = "--outdir" if args.outdir else "the default --outdir inside the run folder"
        raise SegMentorError(f"cannot write to {outdir}, {where} ({first_line(err)}); "
                             f"pass another --outdir") from None
    return outdir


# --- Scoring a split ---------------------------------------------------------------------

def evaluate_split(run, checkpoint, args, outdir):
    """Predict and score every image of the split, write the outputs; returns the metrics."""
    spec = run.dataset()
    viz_indices = range(args.first2viz, args.last2viz)

    def save_pictures(index, item):
        name = os.path.splitext(item.filename)[0] + ".png"
        if args.save_predictions:
            save_png(item.prediction, os.path.join(outdir, "predictions", name))
        if index in viz_indices:
            figure = side_by_side_figure(item.image, item.prediction, item.label, spec.colors,
                                         spec.class_names, IGNORE_LABEL, title=item.filename)
            save_figure(figure, os.path.join(outdir, "viz", name))

    scores = score_split(run, checkpoint, args.split, args.pixels, args.batch_size, save_pictures,
                         image_indices=viz_indices)
    metrics = scores.metrics(spec.class_names)
    metrics.update(
        miou_ci95=list(scores.miou_ci()),
        num_images=scores.num_images, step=checkpoint.step, split=args.split,
        checkpoint=os.path.basename(checkpoint.prefix), pixels=run.eval_pixels(args.pixels))
    write_json(metrics, os.path.join(outdir, "metrics.json"))
    write_confusion_csv(scores.confusion, spec.class_names, os.path.join(outdir, "confusion.csv"))
    save_figure(confusion_heatmap_figure(scores.confusion, spec.class_names),
                os.path.join(outdir, "confusion.png"))
    return metrics


def percent(fraction):
    """'61.3' for 0.613; 'n/a' for an undefined score (NaN)."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.1f}"


def print_metrics(metrics):
    low, high = metrics["miou_ci95"]
    print(f"mIoU {percent(metrics['miou'])} [{percent(low)}, {percent(high)}]  "
          f"({CONFIDENCE_LEVEL:.0%} bootstrap interval over {metrics['num_images']} images, "
          f"{metrics['split']} split, step {metrics['step']})")
    print(f"pixel accuracy {percent(metrics['pixel_accuracy'])}  "
          f"mean accuracy {percent(metrics['mean_accuracy'])}  fw IoU {percent(metrics['fw_iou'])}")
    width = max(len("class"), *map(len, metrics["per_class_iou"]))
    print(f"{'class':<{width}}  IoU %")
    for name, iou in metrics["per_class_iou"].items():
        print(f"{name:<{width}}  {percent(iou):>5}")


def _json_safe(value):
    """NaN (an undefined score) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json(data, path):
    write_text_atomic(path, json.dumps(_json_safe(data), indent=1) + "\n")


def write_confusion_csv(conf, class_names, path):
    """Rows: true class, columns: predicted class, pixel counts."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["truth \\ predicted", *class_names])
    for name, row in zip(class_names, conf):
        writer.writerow([name, *row.tolist()])
    write_text_atomic(path, text.getvalue())


# --- Segmenting photos and videos -----------------------------------------------------------

def segment_images(segmenter, paths, outdir, save_predictions):
    """Coloured prediction and overlay per image (plus class ids with save_predictions)."""
    spec = segmenter.spec
    for path in tqdm(paths, desc="segmenting images", unit="img"):
        image = read_rgb(path)
        prediction = segmenter.segment(image)
        colored = colorize(prediction, spec.colors, IGNORE_LABEL)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_png(colored, os.path.join(outdir, f"{stem}_prediction.png"))
        save_png(overlay(image, colored), os.path.join(outdir, f"{stem}_overlay.png"))
        if save_predictions:
            save_png(prediction, os.path.join(outdir, "predictions", f"{stem}.png"))
    print(f"segmented {len(paths)} image(s) into {outdir}")


def segment_movie(segmenter, reader, outdir):
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
            writer.write(overlay(frame, colorize(prediction, segmenter.spec.colors, IGNORE_LABEL)))
    print(f"segmented {writer.num_frames} frames of {reader.width}x{reader.height} at "
          f"{writer.num_frames / max(seconds, 1e-9):.1f} fps (network + resize) -> {out_path}")


def main(args):
    select_gpu(args.gpu)  # before the first session, which is when TF claims devices
    run = TrainedRun(args.traindir, args.datapath)
    checkpoint = run.checkpoint(args.afteriter, best=args.best)
    run.eval_pixels(args.pixels)  # reject a bad --pixels before any graph is built
    run.dataset()                 # and data that cannot be found before anything is written
    if args.imagepath or args.moviepath:
        # Open every input first: a bad path fails before the network is built.
        paths = image_files(args.imagepath) if args.imagepath else []
        movie = VideoReader(args.moviepath) if args.moviepath else None
        try:
            outdir = make_outdir(args, "images" if args.imagepath else "movie", checkpoint.step)
            with Segmenter(run, checkpoint, args.pixels) as segmenter:
                if paths:
                    segment_images(segmenter, paths, outdir, args.save_predictions)
                if movie:
                    segment_movie(segmenter, movie, outdir)
        finally:
            if movie:
                movie.close()
        return
    outdir = make_outdir(args, args.split, checkpoint.step)
    metrics = evaluate_split(run, checkpoint, args, outdir)
    print_metrics(metrics)
    print(f"outputs in {outdir}")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
