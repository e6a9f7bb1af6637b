"""Data lists for the bundle: from a split folder of processed scans, or from a MONAI datalist JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

__all__ = ["load_split"]

logger = logging.getLogger(__name__)


def _from_folder(folder: Path) -> list[dict[str, Any]]:
    items = []
    for meta in sorted(folder.glob("*/meta.json")):
        scan = meta.parent
        items.append(
            {
                "image": str(scan / "image.nii.gz"),
                "label": str(scan / "label.nii.gz"),
                "meta": str(meta),
                "seriesuid": scan.name,
            }
        )
    return items


def load_split(datalist: str | Path | None, split: str, folder: str | Path | None) -> list[dict[str, Any]]:
    """Items ``{"image", "label", "meta", "seriesuid"}`` of one split.

    Args:
        datalist: MONAI datalist JSON (``training``/``validation``/``test`` keys, paths relative to the JSON's
            folder); when given it takes precedence over ``folder``.
        split: ``training``, ``validation`` or ``test``.
        folder: a split folder of processed scans (``data.train_dir`` / ``data.val_dir``).

    Raises:
        ValueError: when neither source yields a scan; the message names the config keys to set.
    """
    if datalist:
        path = Path(datalist)
        if not path.exists():
            raise ValueError(f"data.datalist: {path} not found; run `pivot split` or set data.datalist: null")
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=str(path.parent))
        for item in items:
            item.setdefault("meta", str(Path(item["image"]).parent / "meta.json"))
    else:
        if folder is None or not Path(folder).is_dir():
            raise ValueError(
                f"split folder {folder} for '{split}' does not exist; run `pivot preprocess` and "
                f"`pivot split`, or set data.train_dir / data.val_dir (or data.datalist)"
            )
        items = _from_folder(Path(folder))
    if not items:
        raise ValueError(f"no scans for '{split}' in {datalist or folder}; expected <seriesuid>/meta.json entries")
    logger.info("%s: %d scans from %s", split, len(items), datalist or folder)
    return items
