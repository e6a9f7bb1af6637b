"""pivot_monai.files.atomic_output_path: writers that take a file name (SimpleITK) write whole files or nothing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import write_image
from pivot_monai.files import atomic_output_path, remove_stale_temporaries

GEOM = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3), (16, 12, 8))


def test_the_temporary_keeps_the_suffix_and_becomes_the_file(tmp_path):
    target = tmp_path / "scan" / "image.nii.gz"
    with atomic_output_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name == f".image.{os.getpid()}.tmp.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 4, 4), np.int16)), str(tmp), useCompression=True)
        assert not target.exists()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).sum() == 64
    assert [p.name for p in target.parent.iterdir()] == ["image.nii.gz"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = write_image(np.zeros(GEOM.size, np.int16), GEOM, tmp_path / "image.nii.gz")
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="writer broke"), atomic_output_path(target) as tmp:
        tmp.write_bytes(b"half an image")
        raise RuntimeError("writer broke")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]


def test_an_output_under_a_file_names_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as exc:
        write_image(np.zeros(GEOM.size, np.int16), GEOM, tmp_path / "afile" / "image.nii.gz")
    assert exc.value.errno == errno.ENOTDIR and "afile is a file" in str(exc.value)


def test_a_mhd_cannot_take_a_temporary_name(tmp_path):
    with pytest.raises(ValueError, match="names its .raw by file name"), atomic_output_path(tmp_path / "a.mhd"):
        pass


def test_stale_temporaries_of_named_writers_are_removed_and_other_files_kept(tmp_path):
    stale = [tmp_path / ".image.123.tmp.nii.gz", tmp_path / ".checkpoint_epoch=2.pt.77.tmp"]
    kept = [tmp_path / "image.nii.gz", tmp_path / "notes.tmp.txt", tmp_path / ".hidden"]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept)


def test_a_kill_while_writing_a_large_image_leaves_the_previous_image(tmp_path):
    target = write_image(np.full(GEOM.size, 7, np.int16), GEOM, tmp_path / "image.nii")
    code = (
        "import numpy as np, sys\n"
        "from pivot_monai.data.geometry import Geometry\n"
        "from pivot_monai.data.io import write_image\n"
        "g = Geometry((0, 0, 0), (1, 1, 1), np.eye(3), (400, 400, 400))\n"
        "write_image(np.ones(g.size, np.float32), g, sys.argv[1])\n"  # 256 MB, uncompressed
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline, tmp = time.monotonic() + 60, None
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = [p for p in tmp_path.glob(".image.*.tmp.nii") if p.stat().st_size > 1_000_000]
        if tmps:
            tmp = tmps[0]
            break
        time.sleep(0.005)
    if tmp is None:
        proc.kill()
        pytest.skip("the write finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 7  # never a partial image under the name
    assert remove_stale_temporaries(tmp_path) == [tmp]
