"""examples/ablations.py runs end to end on tiny settings and reports every arm."""

import os

import pytest

from conftest import load_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_ablations_tiny_run(tmp_path):
    module = load_example("ablations")
    out = tmp_path / "abl"
    results = module.main(["--steps", "2", "--batch-size", "4", "--train-per-class", "1", "--val-per-class", "1",
                           "--arms", "baseline", "tanh", "pool-2/2", "no-lrn", "no-dropout",
                           "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert [r["arm"] for r in results] == ["baseline", "tanh", "pool-2/2", "no-lrn", "no-dropout"]
    assert all(r["steps"] == 2 and len(r["curve"]) == 2 for r in results)
    # each arm changes one thing, recorded with its results
    assert [r["options"] for r in results] == [{}, {"activation": "tanh"}, {"pool": "(2, 2)"},
                                                {"lrn": "False"}, {"dropout": "0.0"}]
    assert all(0.0 <= r["val_error"] <= 1.0 for r in results)
    table = (out / "ablations.md").read_text()
    assert "| tanh |" in table and "paper says" in table
    assert (out / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, words", [(["--steps", "0"], "--steps must be >= 1, got 0"),
                                         (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                                         (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
                                         (["--lr", "0"], "--lr must be > 0")])
def test_ablations_refuse_bad_numbers_naming_the_option(tmp_path, capsys, argv, words):
    module = load_example("ablations")
    with pytest.raises(SystemExit):
        module.main(argv + ["--out", str(tmp_path / "abl")])
    assert words in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()
