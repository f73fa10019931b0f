"""First-run polish of the command line: the rough edges a new user meets in the first minutes."""

import os
import subprocess
import sys
import warnings

import pytest

from dogcat.cli import main
from tests.helpers import REPO

CAT = REPO / "demos" / "examples" / "cat-chelsea.jpg"


@pytest.fixture
def model(tiny_model_dir):
    return str(tiny_model_dir / "dog_cat_classifier.keras")


def test_a_closed_pipe_ends_predict_quietly_with_the_sigpipe_status(tmp_path, model, monkeypatch, capsys):
    # `dogcat predict DIR | head -1`: the reader has gone before dogcat writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        code = main(["predict", str(CAT), "--model", model, "--json"])
    finally:
        stdout.close()  # must not raise: stdout now points at devnull
    assert code == 141
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_during_predict_exits_130_and_says_so(model, monkeypatch, capsys):
    from dogcat.inference import Classifier

    def interrupted(*args, **kwargs):  # Ctrl-C lands in the main thread while the decode thread works
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "_classify", interrupted)
    assert main(["predict", str(CAT), str(CAT), "--model", model]) == 130
    assert capsys.readouterr().err.endswith("dogcat: interrupted\n")


def test_a_folder_without_images_is_one_line_naming_what_was_skipped(tmp_path, model, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", model]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"dogcat: error: No images found (JPEG, PNG, WebP, HEIC, AVIF, BMP or GIF). Received: paths={[str(tmp_path / 'empty')]}\n"

    others = tmp_path / "others"
    others.mkdir()
    for name in ("a.tiff", "b.TIFF", "c.pdf", ".DS_Store"):
        (others / name).write_bytes(b"x")
    assert main(["predict", str(others), "--model", model, "--csv"]) == 2
    skipped, error = capsys.readouterr().err.splitlines()
    assert skipped.startswith("dogcat: skipped 3 file(s)")
    assert skipped.endswith(f": .pdf (1), .tiff (2): {others / 'a.tiff'}, {others / 'b.TIFF'}, {others / 'c.pdf'}")
    assert error.startswith("dogcat: error: No images found")


def test_a_missing_model_is_named_not_the_class_names_beside_it(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "missing.keras"), str(CAT)]) == 2
    assert capsys.readouterr().err == f"dogcat: error: Model file not found. Received: model_path='{tmp_path / 'missing.keras'}'\n"


def test_version_and_a_bad_port(capsys):
    from dogcat import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"dogcat {__version__}\n"
    for command, port in (("app", "99999"), ("demo", "0"), ("app", "http")):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--port", port])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"dogcat {command}: error: argument --port: must be a whole number from 1 to 65535. Received: port='{port}'")


def test_control_characters_in_file_names_are_escaped_in_the_table_and_on_stderr(tmp_path, model, capsys):
    evil = tmp_path / "evil\x1b[31mred\nline.jpg"
    evil.write_text("not a photo")
    good = tmp_path / "cat\tphoto.jpg"
    good.write_bytes(CAT.read_bytes())
    assert main(["predict", str(tmp_path), "--model", model]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3  # header and one line per file
    assert "evil\\x1b[31mred\\nline.jpg" in out
    assert "cat\\tphoto.jpg" in out
    assert "\x1b" not in out + err
    assert f"{tmp_path}/evil\\x1b[31mred\\nline.jpg  error: not an image" in out  # its reason, once, in its row


def test_library_warnings_do_not_reach_cli_users_but_stay_for_callers(model, monkeypatch, capsys):
    from dogcat.inference import Classifier

    real = Classifier.predict

    def noisy(self, *args, **kwargs):
        warnings.warn("some library's deprecation notice", FutureWarning, stacklevel=1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "predict", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["predict", str(CAT), "--model", model]) == 0
        assert "deprecation" not in capsys.readouterr().err
        with pytest.raises(FutureWarning):  # main() left the caller's filters as they were
            warnings.warn("after", FutureWarning, stacklevel=1)


def test_predict_with_the_shipped_model_never_imports_keras_or_tensorflow():
    """The ONNX twin serves the shipped model, so the command's cold start skips TensorFlow (seconds, ~0.5 GB)."""
    check = (
        "import sys\n"
        "from dogcat.cli import main\n"
        f"code = main(['predict', {str(CAT)!r}, '--json'])\n"
        "loaded = sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules))\n"
        "assert code == 0 and not loaded, (code, loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DOGCAT_MODEL", "DOGCAT_RUNTIME")}
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '"verdict": "cat"' in result.stdout
