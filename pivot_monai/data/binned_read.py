"""Reading a LUNA16 ``.mhd/.raw`` scan straight into the binned copy that preprocessing starts from.

:func:`~pivot_monai.data.preprocess.preprocess_image` first averages ``round(ratio)`` voxels per axis of a scan finer
than the target spacing (:func:`~pivot_monai.data.preprocess.shrink_factors`, ITK's ``BinShrink``); everything after
works on that copy. Reading the whole scan first (``sitk.ReadImage``) copies all of it (0.13 GB for a
512 x 512 x 249 int16 scan) into fresh memory, which the process faults in page by page and then passes over twice
more (HU check, shrink): about 0.10 s per fullsize scan on the 2-core machine of ``benchmarks/``, with a long tail
when the VM is slow to hand out fresh pages.

:func:`read_binned` memory-maps the ``.raw`` payload instead (the page cache, nothing copied), checks its HU range in
one pass, and runs ``BinShrink`` over slabs of :data:`SLAB_SLICES` slices, so only one slab at a time is copied
(into memory the heap reuses): about 0.067 s and 0.1 GB less peak memory for the same scan. Bins never straddle two
slabs, so the binned image is identical to ``BinShrink`` of the whole scan, pixels and geometry (tested).

ITK still reads the header, so origin, spacing and direction are exactly what ``sitk.ReadImage`` reports. Only the
payload is mapped by hand, because ITK offers no reading from a memory map; and only for the plain layout that
LUNA16 uses (one uncompressed little-endian data file of scalar voxels, no header offset): any other file
(NIfTI, DICOM, ``.mha``, compressed or big-endian ``.mhd``, ...) makes :func:`read_binned` return ``None`` and the
caller reads it with ``read_sitk``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import (
    MHD_ELEMENT_TYPES,
    check_mhd_payload,
    check_value_range,
    mhd_data_file,
    read_mhd_header,
    unreadable,
    value_range,
)

__all__ = ["SLAB_SLICES", "BinnedScan", "mhd_payload", "read_binned"]

logger = logging.getLogger(__name__)

SLAB_SLICES = 16
"""Slices per slab (rounded down to a multiple of the z factor): 16 measured fastest of 8, 16, 32 and 64."""


@dataclass
class BinnedScan:
    """A scan read by :func:`read_binned`.

    Attributes:
        image: ``BinShrink(raw, factors)`` in the stored pixel type, with its geometry.
        raw_geometry: the geometry of the scan as stored (what ``Geometry.from_sitk(sitk.ReadImage(path))`` gives).
        factors: the bin size per axis (x, y, z).
    """

    image: sitk.Image
    raw_geometry: Geometry
    factors: np.ndarray


def mhd_payload(path: str | Path) -> tuple[Path, str, tuple[int, int, int], dict[str, str]] | None:
    """``(data file, ElementType, (z, y, x) shape, header)`` of a ``.mhd`` whose payload can be memory-mapped, else
    ``None``.

    That is one uncompressed data file of scalar voxels, little-endian, without a header offset, in 3D.
    """
    p = Path(path)
    if p.suffix.lower() != ".mhd" or sys.byteorder != "little":
        return None
    header = read_mhd_header(p)
    data_file = mhd_data_file(p, header)
    plain = (
        data_file is not None
        and header.get("NDims") == "3"
        and header.get("CompressedData", "False").lower() != "true"
        and all(header.get(k, "False").lower() != "true" for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB"))
        and header.get("HeaderSize", "0") == "0"
        and header.get("ElementNumberOfChannels", "1") == "1"
        and header.get("ElementType") in MHD_ELEMENT_TYPES
        and not any(k.startswith("ElementToIntensity") for k in header)  # a rescale ITK might apply: leave to ITK
    )
    if not plain:
        return None
    try:
        x, y, z = (int(v) for v in header["DimSize"].split())
    except (KeyError, ValueError):
        return None
    return data_file, header["ElementType"], (z, y, x), header


def read_binned(path: str | Path, factors_for: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> BinnedScan | None:
    """Read a plain ``.mhd/.raw`` scan binned, or ``None`` to read it the usual way.

    ``None`` also when no axis is binned (nothing to save: the whole scan is the preprocessing input).

    Args:
        path: the ``.mhd`` file.
        factors_for: ``(spacing, size) -> factors``, each (x, y, z): the bin size per axis, e.g.
            :func:`~pivot_monai.data.preprocess.shrink_factors` for the target spacing.

    Raises:
        CTReadError: the data file is missing or truncated, the header is unreadable, or the values are NaN or not
            CT in HU (the same checks and messages as :func:`~pivot_monai.data.io.read_sitk`).
    """
    p = Path(path)
    payload = mhd_payload(p)
    if payload is None:
        return None
    data_file, element_type, shape, header = payload
    check_mhd_payload(p, header)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise unreadable(p, err) from err
    code, pixel_type = MHD_ELEMENT_TYPES[element_type]
    raw_geometry = Geometry.from_sitk(reader)
    if raw_geometry.size != shape[::-1] or min(raw_geometry.size) < 2 or reader.GetPixelID() != pixel_type:
        return None  # ITK reads the header differently from this parser: let ITK read the whole scan
    factors = np.asarray(factors_for(raw_geometry.spacing, np.asarray(raw_geometry.size)), int)
    if not np.any(factors > 1):
        return None
    voxels = np.memmap(data_file, dtype=np.dtype("<" + code), mode="r", shape=shape)
    check_value_range(*value_range(voxels), p)  # one pass that also maps the page cache in, before the slabs copy it
    return BinnedScan(_bin_slabs(voxels, factors, raw_geometry), raw_geometry, factors)


def _bin_slabs(voxels: np.ndarray, factors: np.ndarray, geometry: Geometry) -> sitk.Image:
    """``BinShrink`` of a (z, y, x) array slab by slab, with the geometry ``BinShrink`` gives the whole scan."""
    fz = int(factors[2])
    step = max(fz, SLAB_SLICES - SLAB_SLICES % fz)
    end = voxels.shape[0] - voxels.shape[0] % fz  # the slices BinShrink drops: a partial bin at the end
    shrink = [int(f) for f in factors]
    parts: list[np.ndarray] = []
    for z0 in range(0, end, step):
        # each slab's image is freed only when the next one exists, so two 8 MB buffers stay in the heap for the
        # preprocessing that follows (freeing each at once left one: 400-540 more page faults per fullsize scan)
        image = sitk.GetImageFromArray(voxels[z0 : min(z0 + step, end)])
        if not parts:  # the first slab starts where the scan does, so its binned geometry is the whole scan's
            first = sitk.BinShrink(geometry.apply_to_sitk(image), shrink)
            parts.append(sitk.GetArrayFromImage(first))
        else:
            parts.append(sitk.GetArrayFromImage(sitk.BinShrink(image, shrink)))
    return Geometry.from_sitk(first).apply_to_sitk(sitk.GetImageFromArray(np.concatenate(parts)))
