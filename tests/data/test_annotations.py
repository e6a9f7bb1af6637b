from __future__ import annotations

import pytest

from pivot_monai.data.annotations import AnnotationError, read_annotations, read_seriesuids


def _write(tmp_path, text, name="annotations.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_luna16_columns_and_malignancy_and_ignores_extras(tmp_path):
    p = _write(
        tmp_path,
        "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,note\n"
        "a,-100.5,20.25,-300,5.5,4,x\na,1,2,3,12,2,y\nb,0,0,0,3.2,,z\n",
    )
    ann = read_annotations(p)
    assert [n.world for n in ann["a"]] == [(-100.5, 20.25, -300.0), (1.0, 2.0, 3.0)]
    assert ann["a"][0].is_malignant() is True and ann["a"][1].is_malignant() is False
    assert ann["a"][1].is_malignant(threshold=2) is True
    assert ann["b"][0].malignancy is None and ann["b"][0].is_malignant() is None


def test_plain_luna16_file_without_malignancy(tmp_path):
    ann = read_annotations(_write(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm\nu,1,2,3,4\n"))
    assert ann["u"][0].diameter_mm == 4.0 and ann["u"][0].malignancy is None


@pytest.mark.parametrize("diameter", ["nan", "0", "-3"])
def test_bad_diameter_names_file_and_row(tmp_path, diameter):
    p = _write(tmp_path, f"seriesuid,coordX,coordY,coordZ,diameter_mm\nu,1,2,3,{diameter}\n")
    with pytest.raises(AnnotationError, match=r"annotations\.csv:2: diameter_mm"):
        read_annotations(p)


def test_excluded_allows_unknown_diameter(tmp_path):
    p = _write(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm\nu,1,2,3,-1\n", "annotations_excluded.csv")
    assert read_annotations(p, excluded=True)["u"][0].diameter_mm == -1


def test_missing_column_is_reported(tmp_path):
    with pytest.raises(AnnotationError, match="missing column"):
        read_annotations(_write(tmp_path, "seriesuid,coordX,coordY,diameter_mm\nu,1,2,3\n"))


def test_malignancy_out_of_range(tmp_path):
    p = _write(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\nu,1,2,3,4,7\n")
    with pytest.raises(AnnotationError, match="1..5"):
        read_annotations(p)


def test_seriesuid_list_with_and_without_header(tmp_path):
    assert read_seriesuids(_write(tmp_path, "seriesuid\na\nb\n", "s.csv")) == ["a", "b"]
    assert read_seriesuids(_write(tmp_path, "a\nb\n", "t.csv")) == ["a", "b"]
