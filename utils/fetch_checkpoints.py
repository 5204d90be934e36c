"""Fetch the official TF-slim ImageNet checkpoints into --modelspath, verified.

    python -m utils.fetch_checkpoints mobilenet_v1 inception_v1     # or: all
    python -m utils.fetch_checkpoints vgg_16 --sha256 <HEX>          # no pinned checksum

Per network: download the model-zoo tarball (`TARBALLS`: address as published
by the TF-slim model zoo, pinned sha256), check its sha256, extract the
checkpoint under the name fcn_train.py looks for
(`fcn_arch.FEATURE_EXTRACTORS[net].checkpoint_file`), check its variable names
and shapes against the network (`fcn_arch.make_pretrained_restorer`, the check
fcn_train.py makes), and only then move it into place.

Nothing that looks complete is written before it is: the download grows in
`<tarball>.partial` (a rerun resumes it with an HTTP range request, or starts
over when the server cannot resume), the checkpoint is extracted and checked in
a hidden staging folder, and its `.index` file, the one TensorFlow and
fcn_train.py look for, is moved in last. A tarball fetched by hand and put at
`<modelspath>/<tarball name>` is used instead of downloading.

`--base_url` (or the environment variable in `BASE_URL_ENV`) fetches every
tarball as `<base_url>/<tarball name>` instead: a mirror, or a test server.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib

from tqdm import tqdm

from utils.tfcompat import tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils.cli import CheckedArgumentParser  # noqa: E402
from utils.errors import SegMentorError, first_line, run_main  # noqa: E402
from utils.files import PARTIAL_SUFFIX  # noqa: E402

# The default --modelspath of every script: models/ in the repository root (git ignores it).
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
BASE_URL_ENV = "SEGMENTOR_CHECKPOINTS_URL"
LOCK_SUFFIX = ".lock"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECS = 60  # per socket operation: a stalled server fails instead of hanging
# Side of the dummy input the variable check builds the network on (any multiple of 32).
CHECK_PIXELS = 64


@dataclasses.dataclass(frozen=True)
class CheckpointTarball:
    """One model-zoo tarball.

    url: its address as the TF-slim model zoo publishes it.
    sha256: hex digest of the whole tarball; None where no published checksum
        was found, so the user must pass --sha256 (the digest is printed).
    size_bytes: expected size (progress bar total when the server sends none).
    """
    url: str
    sha256: str | None
    size_bytes: int | None = None

    @property
    def file_name(self):
        return os.path.basename(urllib.parse.urlparse(self.url).path)


# Checksums and sizes: those published with the same addresses by OpenVINO's
# Open Model Zoo (models/public/{googlenet-v1-tf,mobilenet-v1-1.0-224-tf,
# mobilenet-v2-1.0-224}/model.yml). None for vgg_16 and resnet_v1_50: neither
# the model zoo nor any public file found names one.
TARBALLS = {
    "vgg_16": CheckpointTarball(
        "http://download.tensorflow.org/models/vgg_16_2016_08_28.tar.gz", None),
    "resnet_v1_50": CheckpointTarball(
        "http://download.tensorflow.org/models/resnet_v1_50_2016_08_28.tar.gz", None),
    "inception_v1": CheckpointTarball(
        "http://download.tensorflow.org/models/inception_v1_2016_08_28.tar.gz",
        "7a620c430fcaba8f8f716241f5148c4c47c035cce4e49ef02cfbe6cd1adf96a6", 24642554),
    "mobilenet_v1": CheckpointTarball(
        "http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_1.0_224.tgz",
        "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0", 94321559),
    "mobilenet_v2": CheckpointTarball(
        "https://storage.googleapis.com/mobilenet_v2/checkpoints/mobilenet_v2_1.0_224.tgz",
        "318084bc1b63d6d7b854553e09cdf77078b1c0168be27c59a0d44253b5ed49dc", 78306834),
}
# Nets without a model-zoo tarball, and where their weights come from instead.
OTHER_SOURCES = {
    "resnet_v1_18": "convert torchvision's ResNet-18 weights with `python -m "
                    "utils.convert_torchvision --net resnet_v1_18 --src resnet18.safetensors`",
}


# --- Download ----------------------------------------------------------------------------

def download(url, target, expected_size=None, progress=True):
    """Download `url` to `target` through `target + '.partial'`, resuming one left by an
    earlier try. `target` only appears once every byte the server announced has arrived."""
    partial = target + PARTIAL_SUFFIX
    have = os.path.getsize(partial) if os.path.isfile(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECS)
    except urllib.error.HTTPError as err:
        if err.code == http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and have:
            os.remove(partial)  # the partial file is not a prefix of this file: start over
            return download(url, target, expected_size, progress)
        raise SegMentorError(f"cannot download {url}: HTTP {err.code} {err.reason}; "
                             f"{_by_hand(url, target)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or first_line(err)
        raise SegMentorError(f"cannot reach {url} ({reason}); offline? "
                             f"{_by_hand(url, target)}") from None
    with response:
        if response.status != http.HTTPStatus.PARTIAL_CONTENT:
            have = 0  # the server ignored the range: it sends the whole file again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else expected_size
        with open(partial, "ab" if have else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True,
                     desc=os.path.basename(target), disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as err:
                    raise SegMentorError(f"download of {url} broke off after {have} bytes "
                                         f"({first_line(err)}); rerun to resume it") from None
                if not chunk:
                    break
                out.write(chunk)
                have += len(chunk)
                bar.update(len(chunk))
    if length and have < total:
        raise SegMentorError(f"download of {url} broke off after {have} of {total} bytes; "
                             f"rerun to resume it")
    os.replace(partial, target)


def _by_hand(url, target):
    return f"fetch {url} by hand, put it at {target} and rerun"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_tarball(net, path, expected_sha256, downloaded_now):
    """SegMentorError unless `path` has the expected sha256. A file this run downloaded
    and that fails is removed (a rerun downloads it again); one found there is left."""
    actual = sha256_of(path)
    if expected_sha256 is None:
        raise SegMentorError(
            f"{net}: no sha256 is pinned for {os.path.basename(path)} (the model zoo publishes "
            f"none); the file at {path} has sha256 {actual}: check it against a source you "
            f"trust, then rerun with --sha256 {actual}")
    if actual != expected_sha256.lower():
        if downloaded_now:
            os.remove(path)
        fate = ("removed it; rerun to download it again" if downloaded_now
                else "delete it, or fetch it again")
        raise SegMentorError(f"{path} has sha256 {actual}, expected {expected_sha256}: the file "
                             f"is damaged or not the official one; {fate}")


# --- Extract and check --------------------------------------------------------------------

def _checkpoint_members(archive, checkpoint_file):
    """{file name in --modelspath: tar member} of the checkpoint `checkpoint_file` in
    `archive`: one file (slim's V1 format) or `.index` + `.data-*` (V2); `.meta` left out."""
    members = {}
    for member in archive.getmembers():
        name = os.path.basename(member.name)
        suffix = name[len(checkpoint_file):]
        if member.isfile() and name.startswith(checkpoint_file) and (
                suffix == "" or suffix == ".index" or suffix.startswith(".data-")):
            members[name] = member
    return members


def install_order(names):
    """Data files first, the `.index` (what readers look for) last."""
    return sorted(names, key=lambda name: (name.endswith(".index"), name))


def check_against_network(net, checkpoint_path):
    """SegMentorError naming the file and the first differing variables unless the
    checkpoint holds every variable of `net`'s feature extractor with its shape."""
    with tf.Graph().as_default():
        arch = fcn_arch.FcnArch(number_of_classes=2, is_training=False, net=net)
        arch.build_net(tf.placeholder(tf.float32, [1, CHECK_PIXELS, CHECK_PIXELS, 3]))
        fcn_arch.make_pretrained_restorer(arch, checkpoint_path)


def install_checkpoint(net, tarball_path, modelspath):
    """Extract `net`'s checkpoint from the tarball into a staging folder, check it against
    the network, then move its files into `modelspath` (the `.index` last)."""
    checkpoint_file = fcn_arch.FEATURE_EXTRACTORS[net].checkpoint_file
    staging = tempfile.mkdtemp(prefix=f".{checkpoint_file}.", suffix=PARTIAL_SUFFIX,
                               dir=modelspath)
    try:
        try:
            with tarfile.open(tarball_path, "r:*") as archive:
                members = _checkpoint_members(archive, checkpoint_file)
                if not members:
                    raise SegMentorError(
                        f"{tarball_path} holds no {checkpoint_file}: it is not the TF-slim "
                        f"checkpoint of {net}; delete it and rerun")
                for name, member in members.items():
                    with archive.extractfile(member) as source, \
                            open(os.path.join(staging, name), "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK_BYTES)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise SegMentorError(f"cannot unpack {tarball_path} ({first_line(err)}); delete "
                                 f"it and rerun") from None
        check_against_network(net, os.path.join(staging, checkpoint_file))
        for name in install_order(members):
            os.replace(os.path.join(staging, name), os.path.join(modelspath, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path, net):
    """Hold an exclusive lock on `lock_path`: two fetches of one network (two shells, two
    runs) would otherwise append to the same .partial file; the second waits, then finds
    the checkpoint installed."""
    with open(lock_path, "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{net}: waiting for another fetch of it to finish", file=sys.stderr)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


# --- One network ------------------------------------------------------------------------

def fetch(net, modelspath, base_url=None, sha256=None, progress=True):
    """Put `net`'s verified ImageNet checkpoint in `modelspath`; returns its path.

    A checkpoint already there is checked against the network and kept.
    """
    if net in OTHER_SOURCES:
        raise SegMentorError(f"{net} has no TF-slim model-zoo checkpoint: {OTHER_SOURCES[net]}")
    source = TARBALLS[net]
    checkpoint_path = os.path.join(modelspath, fcn_arch.FEATURE_EXTRACTORS[net].checkpoint_file)
    try:
        os.makedirs(modelspath, exist_ok=True)
    except OSError as err:
        raise SegMentorError(f"cannot create {modelspath} ({err.strerror}); pass a writable "
                             f"--modelspath") from None
    with _exclusive(os.path.join(modelspath, f".{source.file_name}{LOCK_SUFFIX}"), net):
        if fcn_arch.checkpoint_exists(checkpoint_path):
            check_against_network(net, checkpoint_path)
            print(f"{net}: {checkpoint_path} is already there and fits the network")
            return checkpoint_path
        url = f"{base_url.rstrip('/')}/{source.file_name}" if base_url else source.url
        tarball_path = os.path.join(modelspath, source.file_name)
        downloaded_now = not os.path.isfile(tarball_path)
        if downloaded_now:
            download(url, tarball_path, source.size_bytes, progress)
        verify_tarball(net, tarball_path, sha256 or source.sha256, downloaded_now)
        install_checkpoint(net, tarball_path, modelspath)
        os.remove(tarball_path)
    print(f"{net}: {checkpoint_path} installed, sha256-verified and checked against the network")
    return checkpoint_path


# --- Command line -------------------------------------------------------------------------

def _check_flags(parser, args):
    if "all" in args.nets:
        if len(args.nets) > 1:
            parser.error("'all' already names every network: give it alone")
        args.nets = list(TARBALLS)
    if args.sha256 and len(args.nets) != 1:
        parser.error("--sha256 pins the tarball of one network: name exactly one")


def build_parser():
    nets = list(TARBALLS) + list(OTHER_SOURCES)
    parser = CheckedArgumentParser(
        prog="python -m utils.fetch_checkpoints", check=_check_flags,
        description="Download the official TF-slim ImageNet checkpoints, verify their sha256 "
                    "and variables, and install them where fcn_train.py looks for them.")
    parser.add_argument("nets", nargs="+", metavar="NET", choices=nets + ["all"],
                        help=f"networks to fetch: {', '.join(TARBALLS)}, or all")
    parser.add_argument("--modelspath", default=MODELS_DIR,
                        help="folder to install the checkpoints in, fcn_train.py's "
                             "--modelspath (default: %(default)s)")
    parser.add_argument("--base_url", default=os.environ.get(BASE_URL_ENV),
                        help=f"fetch each tarball as BASE_URL/<tarball name> (a mirror) instead "
                             f"of the model zoo's address (default: ${BASE_URL_ENV} if set)")
    parser.add_argument("--sha256", default=None, type=str.lower, metavar="HEX",
                        help="expected sha256 of the one network's tarball, in place of the "
                             "pinned one (needed for vgg_16 and resnet_v1_50, which have none)")
    parser.add_argument("--no_progress", action="store_true", help="no download progress bar")
    return parser


def main(args):
    for net in args.nets:
        fetch(net, args.modelspath, args.base_url, args.sha256, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
