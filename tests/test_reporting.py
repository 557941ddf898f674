import json
import math

import pytest

from hf_fedzo import reporting
from hf_fedzo.reporting import draw_curves, plot_curves, write_atomic, write_json


def test_write_json_replaces_atomically_and_writes_nan_as_null(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    write_json(target, {"accuracy": 0.5})
    write_json(target, {"accuracy": math.nan, "curve": [1.0, math.inf]})
    assert json.loads(target.read_text()) == {"accuracy": None, "curve": [1.0, None]}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    assert target.stat().st_mode & 0o044 == 0o044  # readable by others, like the model files beside it


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.5})

    def crash(handle):
        handle.write(b'{"accur')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, crash)
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_draw_curves_skips_the_figure_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reporting, "plots_available", lambda: False)
    assert draw_curves(tmp_path / "acc.png", {"a": ([1, 2], [0.5, 0.6])}, xlabel="x", ylabel="y") is None
    assert not (tmp_path / "acc.png").exists() and "pip install 'hf-fedzo[plots]'" in caplog.text


def test_plot_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_curves(tmp_path / "acc.png", {"a": ([1, 2], [0.5, 0.6]), "b": ([1, 3], [0.4, 0.7])},
                       xlabel="FLOPs", ylabel="accuracy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_with_bands_and_a_reference_line(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_curves(tmp_path / "bands.png", {"a": ([0, 1, 2], [0.5, 0.6, 0.7])}, bands={"a": [0.0, 0.05, 0.1]},
                       reference=("zero-shot", 0.5), xlabel="FLOPs", ylabel="accuracy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"bands\['a'\] needs one spread per point"):
        plot_curves(tmp_path / "bad.png", {"a": ([0, 1], [0.5, 0.6])}, bands={"a": [0.1]}, xlabel="x", ylabel="y")


def test_a_flat_curve_gets_a_readable_axis_within_the_possible_values():
    from hf_fedzo.reporting import widened_ylim

    assert widened_ylim(0.49, 0.51, 0.1) == pytest.approx((0.45, 0.55))
    # never (beyond a 2% margin of the span) above an accuracy of 1 or below 0
    assert widened_ylim(0.99, 1.01, 0.1, (0.0, 1.0)) == pytest.approx((0.902, 1.002))
    assert widened_ylim(-0.01, 0.01, 0.1, (0.0, 1.0)) == pytest.approx((-0.002, 0.098))
    assert widened_ylim(0.2, 0.9, 0.1, (0.0, 1.0)) == (0.2, 0.9)  # a real spread is left alone
    assert widened_ylim(0.945, 1.055, 0.1, (0.0, 1.0)) == pytest.approx((0.892, 1.002))  # matplotlib's own margin
