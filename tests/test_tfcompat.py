"""utils/tfcompat.py: the process-wide TensorFlow settings it makes before TF loads."""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PROBE = "from utils.tfcompat import onednn_enabled; print(onednn_enabled())"


def _onednn_in_fresh_interpreter(setting):
    """onednn_enabled() in a new interpreter whose TF_ENABLE_ONEDNN_OPTS is `setting`
    (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_onednn_is_on_unless_the_user_turns_it_off(setting, expected):
    assert _onednn_in_fresh_interpreter(setting) == expected
