"""A non-editable install ships the registration hook too: the wheel carries ivcp.pth at its root."""

import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_wheel_ships_the_pth_hook(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), REPO],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("ivcp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("ivcp.pth").decode().strip() == "import ivcp._autoload"

    assert {"ivcp/_autoload.py", "ivcp/integration.py", "ivcp/train/action_cls/workflow.py"} <= names
