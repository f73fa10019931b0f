"""Hostile input that must never cost a row: link loops, very deep trees, damaged or extreme model
settings (each test here failed before its fix)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dogcat.data import expand_paths, list_image_files


def test_a_glob_does_not_follow_links_to_folders(tmp_path):
    """`**` entered `self -> .` 40 times over (one photo, 41 paths; two such links: 2^40)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "self").symlink_to(".")
    found, missing = expand_paths([f"{tmp_path}/**/*.jpg"])
    assert found == [f"{tmp_path}/a/cat.jpg"]
    assert missing == []


def test_a_glob_over_two_links_to_the_same_folder_finishes(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"x")
    (tmp_path / "one").symlink_to(".")
    (tmp_path / "two").symlink_to(".")
    # In a child with a deadline: before the fix this listed 2^40 paths (minutes, then memory).
    code = "from dogcat.data import expand_paths; print(expand_paths(['**/*.jpg']))"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "(['cat.jpg'], [])", result.stderr[-500:]
    assert time.monotonic() - started < 30


def test_a_very_deep_folder_is_listed(tmp_path):
    """Python 3.11's os.walk recurses: 1,500 nested folders raised RecursionError and listed nothing."""
    deep = tmp_path
    for _ in range(1500):  # os.makedirs recurses too
        deep = deep / "d"
        deep.mkdir()
    (deep / "cat.jpg").write_bytes(b"x")
    try:
        files, unreadable = list_image_files(tmp_path)
        assert files == [deep / "cat.jpg"]
        assert unreadable == []
    finally:  # by hand, bottom up: shutil.rmtree (pytest's clean-up) recurses as well
        (deep / "cat.jpg").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_a_model_config_out_of_range_is_said_and_the_defaults_serve(tmp_path, tiny_model_dir, capsys):
    """`predict.batch_size = 1e8` beside a model took predict to 22 GB; an invalid value was dropped silently."""
    import shutil

    from dogcat.cli import main
    from dogcat.inference import Classifier

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.toml").write_text("[predict]\nbatch_size = 100000000\n")
    classifier = Classifier.from_path(model, runtime="keras")
    assert classifier.batch_size == 32
    assert any("predict.batch_size must be in [1, 128]" in w for w in classifier.warnings)
    photo = tmp_path / "cat.png"
    from tests.imagegen import write_pet

    write_pet(photo, "cat", 0)
    assert main(["predict", str(photo), "--model", str(model), "--runtime", "keras", "--json"]) == 0
    err = capsys.readouterr().err
    assert "config.toml beside the model is not used (predict.batch_size must be in [1, 128]" in err
