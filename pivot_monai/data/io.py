"""Reading and writing CT volumes: LUNA16 ``.mhd/.raw``, NIfTI and DICOM series, one representation.

SimpleITK does the reading for every format, so the geometry (origin, spacing, direction) is exactly what ITK
reports, in the LPS frame LUNA16 annotations use. Arrays are returned in index order ``(x, y, z)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pivot_monai.data.geometry import Geometry
from pivot_monai.files import atomic_output_path

__all__ = [
    "CTReadError",
    "CTVolume",
    "IMAGE_SUFFIXES",
    "MHD_ELEMENT_TYPES",
    "check_continuity",
    "check_mhd_payload",
    "check_nifti_finite",
    "check_value_range",
    "find_scans",
    "is_dicom_file",
    "mhd_data_file",
    "neighbour_ratios",
    "read_ct",
    "read_mhd_header",
    "read_sitk",
    "select_dicom_series",
    "seriesuid_from_path",
    "sitk_to_volume",
    "unreadable",
    "value_range",
    "volume_to_sitk",
    "write_image",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd")
# plausible CT range in HU; a volume entirely outside it is not CT
_CT_MIN_HU, _CT_MAX_HU = -2000.0, 5000.0
# no voxel below -100 HU but some above 700: raw detector values without the rescale intercept (air stored as ~0)
_NO_AIR_HU, _SHIFTED_MIN_MAX_HU = -100.0, 700.0
# neighbouring voxels of a CT differ far less than random pairs (0.04-0.14 along every axis on synthetic scans from
# 0.7 to 2.5 mm, noise included); a CT read with the wrong DimSize stays smooth along x (whole rows are intact) and
# jumps between unrelated voxels along another axis (0.7-1.1)
_SMOOTH_RATIO, _JUMPING_RATIO = 0.3, 0.5


class CTReadError(ValueError):
    """A scan that cannot be read as a 3D CT volume. The message names the file and what is wrong."""


@dataclass
class CTVolume:
    """A CT scan in HU with its full geometry.

    Attributes:
        array: (X, Y, Z) HU values, index order x, y, z.
        geometry: origin/spacing/direction/size of ``array``.
        seriesuid: identifier used in LUNA16 CSVs (file stem, or DICOM SeriesInstanceUID).
        path: the file or folder it was read from.
    """

    array: np.ndarray
    geometry: Geometry
    seriesuid: str
    path: Path | None = None


def seriesuid_from_path(path: str | Path) -> str:
    """LUNA16 seriesuid of a scan path: the file name without ``.mhd``/``.nii.gz``/..., or the DICOM folder name."""
    p = Path(path)
    name = p.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def _is_dicom_dir(p: Path) -> bool:
    return p.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))


def is_dicom_file(p: Path) -> bool:
    """Whether ``p`` is a DICOM file by its content: the ``DICM`` marker after the 128-byte preamble, or (files
    without one) a header pydicom can parse. The suffix does not matter (PACS exports often have none)."""
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=False)
    except Exception:  # noqa: BLE001 - anything pydicom cannot parse is not DICOM
        return False
    return "SOPClassUID" in ds or "SeriesInstanceUID" in ds


def _looks_like_dicom_dir(folder: Path, files: list[str]) -> bool:
    if any(f.lower().endswith(".dcm") for f in files):
        return True
    # slices without the suffix: look at a few files that are not another known format
    candidates = [
        f for f in sorted(files) if not f.lower().endswith((*IMAGE_SUFFIXES, ".raw", ".csv", ".json", ".txt"))
    ]
    return any(is_dicom_file(folder / f) for f in candidates[:3])


def find_scans(root: str | Path) -> list[Path]:
    """All scans below ``root``: ``.mhd``/``.mha``/NIfTI/NRRD files and DICOM series folders, sorted.

    A DICOM folder is found by its ``.dcm`` files or, without the suffix, by the content of its files
    (:func:`is_dicom_file`). ``root`` may itself be a scan file or a DICOM folder.
    """
    root = Path(root)
    if _is_image_file(root):
        return [root]
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory (expected a CT scan or a folder of scans)")
    found = sorted(p for p in root.rglob("*") if _is_image_file(p))
    dicom_dirs = sorted(Path(d) for d, _, files in os.walk(root) if files and _looks_like_dicom_dir(Path(d), files))
    found += [d for d in dicom_dirs if _is_dicom_dir(d)]
    return found


def _series_tags(first_file: str) -> dict[str, str]:
    try:
        import pydicom

        ds = pydicom.dcmread(first_file, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - tags unknown: the series is still a candidate, ranked last
        return {}
    return {k: str(getattr(ds, k, "") or "") for k in ("Modality", "SeriesDescription", "SeriesNumber")}


def select_dicom_series(folder: str | Path, series_uid: str | None = None) -> tuple[str, list[str]]:
    """The DICOM series of ``folder`` to read, chosen by its tags, and its files in slice order.

    With one series, that one. With several, ``series_uid`` when given, else the CT series (``Modality`` CT) with the
    most slices; a warning names every series and the one used, so a folder mixing a scout, a dose report and the
    CT never silently yields the wrong one.

    Raises:
        CTReadError: no series, or ``series_uid`` not among them (the message lists them).
    """
    p = Path(folder)
    reader = sitk.ImageSeriesReader()
    series = list(reader.GetGDCMSeriesIDs(str(p)))
    if not series:
        raise CTReadError(f"{p}: folder holds no DICOM series (expected the slices of one CT series)")
    files = {uid: list(reader.GetGDCMSeriesFileNames(str(p), uid)) for uid in series}
    if series_uid is not None:
        if series_uid not in files:
            raise CTReadError(f"{p}: no DICOM series {series_uid}; the folder holds {', '.join(series)}")
        return series_uid, files[series_uid]
    if len(series) == 1:
        return series[0], files[series[0]]
    tags = {uid: _series_tags(files[uid][0]) for uid in series}
    chosen = max(series, key=lambda u: (tags[u].get("Modality", "").upper() == "CT", len(files[u]), -series.index(u)))
    listing = "; ".join(
        f"{uid} ({tags[uid].get('Modality') or '?'}, {len(files[uid])} slice(s)"
        + (f", {tags[uid]['SeriesDescription']}" if tags[uid].get("SeriesDescription") else "")
        + ")"
        for uid in series
    )
    logger.warning(
        "%s holds %d DICOM series: %s; using %s (the CT series with the most slices); put each series in its own "
        "folder to read another",
        p,
        len(series),
        listing,
        chosen,
    )
    return chosen, files[chosen]


def read_sitk(path: str | Path, *, as_float: bool = True) -> sitk.Image:
    """Read a scan as a ``SimpleITK.Image`` of HU, checking it is a readable 3D volume.

    Args:
        path: scan file or DICOM series folder.
        as_float: cast to float32 (default). ``False`` keeps the stored pixel type (LUNA16's ``.raw`` is int16):
            half the memory of a float32 copy, and no cast of the whole scan. :func:`preprocess_image` accepts
            either: it averages downsampled axes in the stored type and casts only the lung region it resamples.

    Raises:
        CTReadError: missing/truncated file, unreadable format, not 3D, NaN values or values outside a CT range.
    """
    p = Path(path)
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            _, files = select_dicom_series(p)
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            if not p.exists():
                raise CTReadError(f"{p}: file not found")
            if p.suffix.lower() == ".mhd":
                check_mhd_payload(p)
            elif p.name.lower().endswith((".nii", ".nii.gz")):
                check_nifti_finite(p)
            image = sitk.ReadImage(str(p))
    except CTReadError:
        raise
    except RuntimeError as err:  # SimpleITK raises RuntimeError with ITK's message
        raise unreadable(p, err) from err
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise CTReadError(f"{p}: expected a 3D CT volume, got size {image.GetSize()} (a 2D image or a single slice?)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(f"{p}: expected a scalar CT image, got {image.GetNumberOfComponentsPerPixel()} components")
    view = sitk.GetArrayViewFromImage(image)
    check_value_range(*value_range(view), p)  # on the stored type: half the bytes
    if not p.is_dir():  # a DICOM series is assembled slice by slice from positions; a file has one layout to get wrong
        check_continuity(view, p, image.GetSize())
    if not as_float or image.GetPixelID() == sitk.sitkFloat32:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def unreadable(p: Path, err: RuntimeError) -> CTReadError:
    """The :class:`CTReadError` for a file SimpleITK could not read (``err`` is its ``RuntimeError``)."""
    first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return CTReadError(f"{p}: unreadable image ({first}); expected a .mhd/.raw pair, NIfTI or DICOM series")


MHD_ELEMENT_TYPES = {
    "MET_UCHAR": ("u1", sitk.sitkUInt8),
    "MET_CHAR": ("i1", sitk.sitkInt8),
    "MET_SHORT": ("i2", sitk.sitkInt16),
    "MET_USHORT": ("u2", sitk.sitkUInt16),
    "MET_INT": ("i4", sitk.sitkInt32),
    "MET_UINT": ("u4", sitk.sitkUInt32),
    "MET_FLOAT": ("f4", sitk.sitkFloat32),
    "MET_DOUBLE": ("f8", sitk.sitkFloat64),
}
"""MetaImage ``ElementType`` -> (numpy type code without byte order, the SimpleITK pixel type ITK reads it as)."""


def read_mhd_header(p: Path) -> dict[str, str]:
    """The ``key = value`` fields of a MetaImage ``.mhd`` header (ITK reads the geometry; this is for the payload)."""
    header: dict[str, str] = {}
    for line in p.read_text(errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
    return header


def mhd_data_file(p: Path, header: Mapping[str, str]) -> Path | None:
    """The one data file a ``.mhd`` header names, next to ``p``; ``None`` for data in the header itself (``LOCAL``),
    a list of files (``LIST``) or a file-name pattern (``%``)."""
    name = header.get("ElementDataFile", "")
    if not name or name == "LOCAL" or "%" in name or name.startswith("LIST"):
        return None
    return p.parent / name


def check_mhd_payload(p: Path, header: Mapping[str, str] | None = None) -> None:
    """Fail early, with the file name, on a ``.mhd`` whose ``.raw`` is missing or not exactly the size the header
    says (``DimSize`` x ``ElementType`` x channels, plus ``HeaderSize``): a shorter file is truncated, a longer one
    means the header does not describe the data (SimpleITK would read the first bytes and say nothing).

    Args:
        p: the ``.mhd`` file.
        header: its fields, when already read (:func:`read_mhd_header`). Default: read here.
    """
    header = read_mhd_header(p) if header is None else header
    raw = mhd_data_file(p, header)
    if raw is None:
        return
    if not raw.exists():
        raise CTReadError(f"{p}: data file {raw.name} is missing (expected it next to the .mhd header)")
    if header.get("CompressedData", "False").lower() == "true":
        return
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        element = header["ElementType"]
        item = np.dtype(MHD_ELEMENT_TYPES[element][0]).itemsize
        expected = int(np.prod(dims)) * item * int(header.get("ElementNumberOfChannels", 1))
        skip = int(header.get("HeaderSize", 0))
    except (KeyError, ValueError):
        return
    actual = raw.stat().st_size
    needed = expected + max(skip, 0)
    what = f"header DimSize={dims} x {element} ({item} byte(s) per voxel) needs {needed} bytes"
    if actual < needed:
        raise CTReadError(
            f"{p}: data file {raw.name} is truncated ({actual} bytes; {what}); re-copy or re-download the scan"
        )
    if actual > needed and skip != -1:  # HeaderSize = -1: the payload is the file's last bytes
        ratio = actual / expected if expected else 0.0
        hint = (
            f"the payload is {ratio:g}x larger: is ElementType wrong (e.g. MET_UCHAR for 2-byte MET_SHORT data)?"
            if ratio in (2.0, 4.0, 8.0)
            else "is DimSize or ElementType wrong, or is it another scan's data file?"
        )
        raise CTReadError(f"{p}: data file {raw.name} holds {actual} bytes but {what}; {hint}")


def check_nifti_finite(p: Path) -> None:
    """Raise :class:`CTReadError` for a float NIfTI holding NaN or infinite voxels.

    SimpleITK's NIfTI reader turns them into 0, so the range check after it cannot see them; nibabel reads the stored
    values (scaled by ``scl_slope``/``scl_inter``). Integer NIfTI files cannot hold them and are not read twice.
    """
    import nibabel as nib

    try:
        img = nib.load(str(p))
        if not np.issubdtype(img.get_data_dtype(), np.floating):
            return
        data = np.asanyarray(img.dataobj)
    except Exception:  # noqa: BLE001 - nibabel's own errors: SimpleITK reads next and reports an unreadable file
        return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise CTReadError(
            f"{p}: {bad} voxel(s) are NaN or infinite (float NIfTI, {data.dtype}); expected finite Hounsfield units; "
            "fix the export that wrote it (SimpleITK would have read them as 0 HU)"
        )


def value_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of an array as floats; NaN propagates to both (so no separate ``isfinite`` pass is needed)."""
    return float(values.min()), float(values.max())


def check_value_range(lo: float, hi: float, p: Path) -> None:
    """Raise :class:`CTReadError` (naming ``p``) for NaN/infinite values, a ``lo..hi`` range that is not CT in HU,
    or one without air that looks like stored values missing their rescale intercept (CT shifted by +1024)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CTReadError(f"{p}: volume contains NaN or infinite values; expected Hounsfield units")
    if hi <= _CT_MIN_HU or lo >= _CT_MAX_HU or hi - lo < 100.0:
        raise CTReadError(
            f"{p}: values {lo:.1f}..{hi:.1f} do not look like CT in Hounsfield units "
            f"(expected air near -1000 and tissue near 0..100); check the rescale slope/intercept"
        )
    if lo >= _NO_AIR_HU and hi >= _SHIFTED_MIN_MAX_HU:
        raise CTReadError(
            f"{p}: values {lo:.1f}..{hi:.1f} hold no air (a chest CT has air and lungs near -1000 HU): the stored "
            f"values look unshifted, i.e. the rescale intercept (usually -1024) was not applied; subtract it (e.g. "
            f"rewrite the scan with RescaleIntercept applied) or fix the header"
        )


def neighbour_ratios(array: np.ndarray, step: int = 8, pairs: int = 50_000) -> tuple[float, float, float]:
    """Mean absolute difference of neighbouring voxels along each axis of ``array``, over that of random pairs.

    A CT changes slowly from voxel to voxel (ratios about 0.05-0.15); a payload read with the wrong layout jumps
    between unrelated voxels along some axis (ratio near 1). Computed on every ``step``-th line across the other
    two axes and ``pairs`` seeded random pairs, so it costs a few milliseconds on a 512 x 512 x 300 scan.

    Args:
        array: a 3D array, in any axis order.
        step: subsampling across the axes not being differenced. Default 8.
        pairs: random voxel pairs for the reference difference. Default 50000.

    Returns:
        One ratio per axis of ``array``; ``0.0`` everywhere for a constant array.
    """
    flat = array.reshape(-1)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, flat.size, pairs), rng.integers(0, flat.size, pairs)
    reference = float(np.mean(np.abs(flat[i].astype(np.float32) - flat[j].astype(np.float32))))
    if reference == 0.0:
        return (0.0, 0.0, 0.0)
    ratios = []
    for axis in range(3):
        index = [slice(None, None, step)] * 3
        index[axis] = slice(None)
        lines = np.asarray(array[tuple(index)], dtype=np.float32)
        ratios.append(float(np.mean(np.abs(np.diff(lines, axis=axis)))) / reference)
    return (ratios[0], ratios[1], ratios[2])


def check_continuity(array: np.ndarray, p: Path, size: tuple[int, ...]) -> None:
    """Raise :class:`CTReadError` when a scan is smooth along one axis but jumps between unrelated voxels along
    another (:func:`neighbour_ratios`).

    This catches a header whose sizes do not describe the data's layout, which the byte count cannot: ``DimSize``
    axes swapped (``512 133 512`` for ``512 512 133``, the same number of bytes), or data written in another axis
    order. Such a scan reads without error but is scrambled, and only "no lungs found" would follow. Whole rows stay
    intact in such a read, so one axis stays smooth; an image that is noise along every axis is not flagged (it is
    not a layout error, and no header check could tell).

    Swapping two axes of equal size (``512 512``) is harmless and not seen: the bytes read as the same image. It is
    a statistical test, not a proof: the thresholds sit between the ratios of real layouts (at most 0.14 measured)
    and of swapped ones (at least 0.7).

    Args:
        array: the image's voxels, ``(z, y, x)`` as SimpleITK gives them.
        p: the file, for the message.
        size: the header's size ``(x, y, z)``.
    """
    if array.ndim != 3 or min(array.shape) < 2:
        return
    ratios = dict(zip("zyx", neighbour_ratios(array)))
    smooth, jumping = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    if ratios[smooth] < _SMOOTH_RATIO and ratios[jumping] > _JUMPING_RATIO:
        field = "DimSize" if p.suffix.lower() in (".mhd", ".mha") else "image size"
        raise CTReadError(
            f"{p}: the voxels are continuous along {smooth} but not along {jumping} (neighbours differ "
            f"{ratios[smooth]:.2f} and {ratios[jumping]:.2f} times as much as random voxels; a CT: about 0.1 along "
            f"every axis): the data is not laid out as the header's {field} {list(size)} (x y z) says. Are the "
            f"{field} axes swapped, or was the array written in another axis order? Fix the header to the size the "
            "scanner exported"
        )


def sitk_to_volume(image: sitk.Image, seriesuid: str, path: Path | None = None) -> CTVolume:
    """Wrap a ``SimpleITK.Image`` as a :class:`CTVolume` with an ``(x, y, z)`` array."""
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return CTVolume(np.ascontiguousarray(array), Geometry.from_sitk(image), seriesuid, path)


def volume_to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Build a ``SimpleITK.Image`` from an ``(x, y, z)`` array and its geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    return geometry.apply_to_sitk(image)


def read_ct(path: str | Path, seriesuid: str | None = None) -> CTVolume:
    """Read a CT scan (``.mhd``, NIfTI, DICOM folder, ...) into a :class:`CTVolume` of float32 HU.

    Args:
        path: scan file or DICOM series folder.
        seriesuid: identifier to attach; default is derived from the path.

    Raises:
        CTReadError: when the scan is unreadable or not a 3D CT volume; the message names the file.
    """
    p = Path(path)
    return sitk_to_volume(read_sitk(p), seriesuid or seriesuid_from_path(p), p)


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool | None = None) -> Path:
    """Write an ``(x, y, z)`` array with its geometry; the format follows the suffix (``.mhd`` writes ``.raw``).

    One-file formats (NIfTI, ``.mha``, ``.nrrd``) are written atomically with fsync
    (:func:`~pivot_monai.files.atomic_output_path`): a kill or a full disk never leaves a truncated image under the
    final name. A ``.mhd``/``.raw`` pair is written in place (its header names the ``.raw`` by file name).

    Raises:
        OSError: the folder cannot be written (the message names the file; an older image is kept).
    """
    p = Path(path)
    use_compression = p.name.endswith(".gz") if compress is None else compress
    image = volume_to_sitk(array, geometry)
    if p.suffix.lower() == ".mhd":
        p.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(p), useCompression=use_compression)
        return p
    with atomic_output_path(p) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=use_compression)
        except RuntimeError as err:  # ITK's message for a failed write: keep the errno-less text, name the file
            raise OSError(f"cannot write {p}: {str(err).strip().splitlines()[-1]}") from err
        _check_written(tmp, p, image)
    return p


def _check_written(tmp: Path, p: Path, image: sitk.Image) -> None:
    """Raise ``OSError`` when ITK's NIfTI writer left an incomplete file: on a full disk it reports nothing and leaves
    0 bytes. A ``.nii`` must hold the voxels after its header; a ``.nii.gz`` ends with the uncompressed size."""
    payload = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
    size = tmp.stat().st_size
    name = p.name.lower()
    if name.endswith(".nii.gz"):
        complete = False
        if size >= 18:  # the smallest gzip stream
            with open(tmp, "rb") as f:
                f.seek(-4, os.SEEK_END)
                stored = int.from_bytes(f.read(4), "little")  # gzip ISIZE: uncompressed bytes mod 2**32
            complete = (stored - payload) % 2**32 < 2**20  # the header (and any extensions) on top of the voxels
    elif name.endswith(".nii"):
        complete = size >= payload + 348
    else:
        complete = size > 0 or payload == 0
    if not complete:
        raise OSError(
            f"cannot write {p}: the file is incomplete after writing ({size} bytes for {payload} bytes of voxels); "
            "is the disk full? The previous file is unchanged"
        )
