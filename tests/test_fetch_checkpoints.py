"""utils/fetch_checkpoints.py against a local HTTP server that the tests start on 127.0.0.1.

The server serves tarballs made here from a small self-made mobilenet_v1
checkpoint (the feature extractor's variables, zeros but one marked tensor,
so the tarball gzips to a few kB). It can cut a response short once, to
test that a rerun resumes the download with an HTTP range request.
"""
import hashlib
import http.server
import io
import os
import re
import tarfile
import threading

import numpy as np
import pytest

from reference_lists import feature_extractor_variables
from utils import fetch_checkpoints
from utils.errors import EXIT_USER_ERROR, run_main
from utils.tfcompat import tf

NET = "mobilenet_v1"
CHECKPOINT_FILE = "mobilenet_v1_1.0_224.ckpt"
TARBALL = fetch_checkpoints.TARBALLS[NET].file_name
MARKED_VARIABLE = "MobilenetV1/Conv2d_0/weights"
MARK = 0.5


def make_checkpoint(folder, variables):
    """Save {name: numpy value} as a TF checkpoint `folder/CHECKPOINT_FILE`; its files."""
    with tf.Graph().as_default():
        tf_vars = [tf.Variable(value, name=name) for name, value in variables.items()]
        with tf.Session() as sess:
            sess.run(tf.variables_initializer(tf_vars))
            tf.train.Saver(tf_vars).save(sess, os.path.join(folder, CHECKPOINT_FILE),
                                         write_meta_graph=True, write_state=False)
    return sorted(os.listdir(folder))


def make_tarball(folder):
    """Every file of `folder` as ./<name> in a .tgz, like the model zoo's; its bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in sorted(os.listdir(folder)):
            archive.add(os.path.join(folder, name), arcname=f"./{name}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_tarball(tmp_path_factory):
    variables = {name: np.zeros(shape, np.float32)
                 for name, shape in feature_extractor_variables(NET).items()}
    variables[MARKED_VARIABLE] = np.full(variables[MARKED_VARIABLE].shape, MARK, np.float32)
    folder = tmp_path_factory.mktemp("good_checkpoint")
    names = make_checkpoint(folder, variables)
    assert CHECKPOINT_FILE + ".meta" in names  # the zoo's tarballs hold one too: not installed
    return make_tarball(folder)


class ZooServer(http.server.ThreadingHTTPServer):
    """Serves `files` {name: bytes} at /<name>, with byte ranges; `cut_next` cuts the
    next response after that many bytes (while announcing the whole length)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ZooHandler)
        self.files, self.ranges, self.cut_next = {}, [], None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/zoo"


class _ZooHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.server.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested else 0
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut, self.server.cut_next = self.server.cut_next, None
        self.wfile.write(body[start:start + cut] if cut else body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    zoo = ZooServer()
    thread = threading.Thread(target=zoo.serve_forever, daemon=True)
    thread.start()
    yield zoo
    zoo.shutdown()
    zoo.server_close()


def fetch(capsys, modelspath, base_url, *extra):
    code = run_main(fetch_checkpoints.main, fetch_checkpoints.build_parser(),
                    [NET, "--modelspath", str(modelspath), "--base_url", base_url,
                     "--no_progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def files_in(folder):
    """The files a user sees in `folder` (the hidden per-tarball lock file left out)."""
    return sorted(name for name in os.listdir(folder)
                  if not name.endswith(fetch_checkpoints.LOCK_SUFFIX))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_fetch_installs_a_verified_checkpoint(tmp_path, server, good_tarball, capsys):
    server.files[TARBALL] = good_tarball
    code, out, err = fetch(capsys, tmp_path, server.base_url, "--sha256", sha256(good_tarball))
    assert code == 0, err
    assert "installed" in out
    # The checkpoint under fcn_train's name; no tarball, .meta, partial or staging left.
    assert files_in(tmp_path) == [CHECKPOINT_FILE + ".data-00000-of-00001",
                                           CHECKPOINT_FILE + ".index"]
    reader = tf.train.NewCheckpointReader(str(tmp_path / CHECKPOINT_FILE))
    assert np.all(reader.get_tensor(MARKED_VARIABLE) == MARK)
    # A rerun finds it, checks it and downloads nothing.
    code, out, _ = fetch(capsys, tmp_path, server.base_url)
    assert code == 0 and "already there" in out
    assert len(server.ranges) == 1


def test_checksum_mismatch_installs_nothing(tmp_path, server, good_tarball, capsys):
    server.files[TARBALL] = good_tarball  # not the official tarball: the pinned sha256 differs
    code, _, err = fetch(capsys, tmp_path, server.base_url)
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert sha256(good_tarball) in err[0] and fetch_checkpoints.TARBALLS[NET].sha256 in err[0]
    assert "rerun to download it again" in err[0]
    assert files_in(tmp_path) == []


def test_unpinned_checksum_prints_the_digest_and_keeps_the_tarball(tmp_path, server,
                                                                    good_tarball, capsys,
                                                                    monkeypatch):
    unpinned = fetch_checkpoints.CheckpointTarball(f"http://zoo.invalid/{TARBALL}", None)
    monkeypatch.setitem(fetch_checkpoints.TARBALLS, NET, unpinned)
    server.files[TARBALL] = good_tarball
    code, _, err = fetch(capsys, tmp_path, server.base_url)
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert f"--sha256 {sha256(good_tarball)}" in err[0]
    assert files_in(tmp_path) == [TARBALL]
    # Rerun with the digest: the kept tarball is used, nothing is downloaded again.
    code, _, err = fetch(capsys, tmp_path, server.base_url, "--sha256", sha256(good_tarball))
    assert code == 0, err
    assert len(server.ranges) == 1


def test_truncated_download_leaves_a_partial_file_that_a_rerun_resumes(
        tmp_path, server, good_tarball, capsys):
    server.files[TARBALL] = good_tarball
    half = len(good_tarball) // 2
    server.cut_next = half
    code, _, err = fetch(capsys, tmp_path, server.base_url, "--sha256", sha256(good_tarball))
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "broke off" in err[0] and "rerun to resume" in err[0]
    assert files_in(tmp_path) == [TARBALL + ".partial"]  # nothing that looks complete
    code, _, err = fetch(capsys, tmp_path, server.base_url, "--sha256", sha256(good_tarball))
    assert code == 0, err
    assert server.ranges == [None, f"bytes={half}-"]
    assert (tmp_path / (CHECKPOINT_FILE + ".index")).exists()


def test_server_gone_is_one_line_saying_where_to_put_a_file_fetched_by_hand(
        tmp_path, server, capsys):
    base_url = server.base_url
    server.shutdown()
    server.server_close()
    code, _, err = fetch(capsys, tmp_path, base_url)
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "cannot reach" in err[0] and str(tmp_path / TARBALL) in err[0]
    assert files_in(tmp_path) == []


def test_tarball_without_the_checkpoint_or_with_other_variables(tmp_path, server, capsys):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "README").write_text("not a checkpoint")
    server.files[TARBALL] = wrong = make_tarball(stray)
    models = tmp_path / "models"
    code, _, err = fetch(capsys, models, server.base_url, "--sha256", sha256(wrong))
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert f"holds no {CHECKPOINT_FILE}" in err[0]

    other = tmp_path / "other"
    other.mkdir()
    make_checkpoint(other, {MARKED_VARIABLE: np.zeros((3, 3, 3, 7), np.float32)})
    server.files[TARBALL] = wrong = make_tarball(other)
    os.remove(models / TARBALL)
    code, _, err = fetch(capsys, models, server.base_url, "--sha256", sha256(wrong))
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert f"does not fit {NET}" in err[0] and MARKED_VARIABLE in err[0]
    assert files_in(models) == [TARBALL]  # no checkpoint, no staging folder


def test_flags(capsys):
    parser = fetch_checkpoints.build_parser()
    assert parser.parse_args(["all"]).nets == list(fetch_checkpoints.TARBALLS)
    for argv in (["all", "vgg_16"], ["vgg_16", "inception_v1", "--sha256", "ab"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert run_main(fetch_checkpoints.main, parser, ["resnet_v1_18"]) == EXIT_USER_ERROR
    assert "convert_torchvision" in capsys.readouterr().err
    assert set(fetch_checkpoints.TARBALLS) | set(fetch_checkpoints.OTHER_SOURCES) == set(
        fetch_checkpoints.fcn_arch.FEATURE_EXTRACTORS)
