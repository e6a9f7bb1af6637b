"""The bundle's model card: measured metrics written into metadata.json, which stays valid against MONAI's schema."""

from __future__ import annotations

import json
import shutil

import pytest

from pivot_monai.inference.model_card import write_bundle_metrics
from tests.conftest import REPO_ROOT, SHARED_DIR

METADATA = REPO_ROOT / "bundle" / "configs" / "metadata.json"
SCHEMA = SHARED_DIR / "monai" / "meta_schema_20240725.json"


def _metrics(cpm: float) -> dict:
    rates = {f"sensitivity@{r:g}": cpm for r in (0.125, 0.25, 0.5, 1, 2, 4, 8)}
    return {"cpm": cpm, "cpm_ci": [cpm - 0.1, cpm + 0.1], **rates, "n_scans": 3, "n_nodules": 4, "settings": {}}


def test_write_bundle_metrics_replaces_eval_metrics_and_keeps_the_rest(tmp_path):
    meta = tmp_path / "metadata.json"
    shutil.copy(METADATA, meta)
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(0.123456)))
    written = write_bundle_metrics(meta, {"test": _metrics(0.8528138528138528), "heldout": tmp_path / "metrics.json"})
    after, before = json.loads(meta.read_text()), json.loads(METADATA.read_text())
    assert after["eval_metrics"] == written
    assert written["test"]["cpm"] == 0.8528 and written["test"]["cpm_95ci"] == [0.7528, 0.9528]
    assert written["heldout"]["cpm"] == 0.1235 and written["heldout"]["n_nodules"] == 4
    assert {k: v for k, v in after.items() if k != "eval_metrics"} == {
        k: v for k, v in before.items() if k != "eval_metrics"
    }


def test_write_bundle_metrics_refuses_metrics_without_a_cpm(tmp_path):
    meta = tmp_path / "metadata.json"
    shutil.copy(METADATA, meta)
    with pytest.raises(ValueError, match="cpm"):
        write_bundle_metrics(meta, {"test": {"n_scans": 3}})
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_bundle_metrics(meta, {"test": tmp_path / "missing" / "metrics.json"})


@pytest.mark.skipif(not SCHEMA.exists(), reason="../shared/monai schema not available")
def test_metadata_with_written_metrics_passes_verify_metadata(tmp_path):
    from monai.bundle import verify_metadata

    meta = tmp_path / "metadata.json"
    shutil.copy(METADATA, meta)
    write_bundle_metrics(meta, {"test": _metrics(0.5)})
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
