"""Installs that would run out of disk stop before they start, saying where, how much is needed and how much is free."""

import re
import shutil
import subprocess

from tests.helpers import REPO


SCRIPT = REPO / "scripts" / "check_disk.sh"


def _check(folder, need_gib: int) -> subprocess.CompletedProcess:
    command = ["bash", str(SCRIPT), str(folder), str(need_gib), "installing IVCP into .venv"]
    return subprocess.run(command, check=False, capture_output=True, text=True)


def test_a_step_that_fits_goes_on(tmp_path):
    result = _check(tmp_path, 0)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_step_that_does_not_fit_stops_and_says_what_to_free(tmp_path):
    need_gib = shutil.disk_usage(tmp_path).free // 2**30 + 100  # other jobs writing meanwhile move it by far less
    result = _check(tmp_path / "not_there_yet", need_gib)
    assert result.returncode == 1
    assert f"installing IVCP into .venv needs about {need_gib} GiB free on the disk that holds {tmp_path}" in (
        result.stderr
    )
    free_said = int(re.search(r"and (\d+) GiB\s+are free", result.stderr).group(1))
    assert abs(free_said - shutil.disk_usage(tmp_path).free // 2**30) <= 1
    assert "Free some space" in result.stderr
