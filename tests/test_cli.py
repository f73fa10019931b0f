import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dogcat.cli import main
from dogcat.verdict import VERDICTS, row_columns
from tests.helpers import REPO, drawn_photo


@pytest.fixture
def photos(tmp_path, kaggle_folder):
    """Two good photos, a truncated JPEG, a text file named .jpg and an empty file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good = [kaggle_folder / "cat.0.jpg", kaggle_folder / "dog.0.jpg"]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not a picture")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_predict_reports_bad_files_and_still_predicts_the_good_ones(photos, tiny_model_dir, capsys):
    code = main(["predict", str(photos), "--model", str(tiny_model_dir / "dog_cat_classifier.keras"), "--csv"])
    out, err = capsys.readouterr()
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(io.StringIO(out))}
    assert code == 1
    assert set(rows) == {"cat.0.jpg", "dog.0.jpg", "truncated.jpg", "notes.jpg", "empty.png"}
    for name in ("cat.0.jpg", "dog.0.jpg"):
        assert rows[name]["label"] in {"cat", "dog"}
        assert float(rows[name]["p_cat"]) + float(rows[name]["p_dog"]) == pytest.approx(1, abs=1e-5)
        assert rows[name]["error"] == ""
    assert "truncated" in rows["truncated.jpg"]["error"]
    assert rows["notes.jpg"]["error"].startswith("not an image")
    assert rows["empty.png"]["error"] == "empty file"
    # One line per bad file, after the one-line warning that this model has no detector; no traceback.
    warning, *errors = err.strip().splitlines()
    assert warning.startswith("dogcat: warning: no ")
    assert len(errors) == 3
    assert all(line.startswith("dogcat: error: ") for line in errors)
    assert "Traceback" not in err


def test_predict_json_glob_and_missing_path(photos, tiny_model_dir, capsys):
    code = main(["predict", str(photos / "*.0.jpg"), str(photos / "nope.jpg"), "--json",
                 "--model", str(tiny_model_dir / "dog_cat_classifier.keras")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [line["path"].rsplit("/", 1)[-1] for line in lines] == ["cat.0.jpg", "dog.0.jpg", "nope.jpg"]
    assert lines[0]["p_cat"] + lines[0]["p_dog"] == pytest.approx(1.0, abs=1e-5)
    assert lines[2] == {**dict.fromkeys(row_columns(["cat", "dog"])), "path": str(photos / "nope.jpg"),
                        "error": "no such file"}


def test_predict_table_exits_zero_when_every_file_is_read(photos, tiny_model_dir, capsys):
    code = main(["predict", str(photos / "cat.0.jpg"), "--model", str(tiny_model_dir / "dog_cat_classifier.keras")])
    header, row = capsys.readouterr().out.splitlines()
    assert code == 0
    assert header.split() == ["path", "verdict", "p(cat)", "p(dog)"]
    assert row.split()[1] in VERDICTS


@pytest.mark.parametrize("runner", ["system", "exec"])
def test_a_malicious_class_names_file_stops_predict_with_one_line(tmp_path, tiny_model_dir, photos, capsys, runner):
    import os
    import pickle
    import shlex

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "dog_cat_classifier.keras").write_bytes((tiny_model_dir / "dog_cat_classifier.keras").read_bytes())
    marker = tmp_path / "pwned"  # in tmp_path, so a regression writes nothing into the checkout
    payload = {"system": (os.system, (f"touch {shlex.quote(str(marker))}",)),
               "exec": (exec, (f"open({str(marker)!r}, 'w').close()",))}[runner]

    class Evil:
        def __reduce__(self):
            return payload

    (model_dir / "class_names.pkl").write_bytes(pickle.dumps(Evil()))
    code = main(["predict", str(photos / "cat.0.jpg"), "--model", str(model_dir / "dog_cat_classifier.keras")])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2
    assert err.startswith("dogcat: error: refusing to load")
    assert err.count("\n") == 1


def test_evaluate_writes_metrics_and_confusion_matrix(tmp_path, tiny_dataset, tiny_model_dir, capsys):
    code = main(["evaluate", str(tiny_model_dir / "dog_cat_classifier.keras"), str(tiny_dataset), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert code == 0
    assert metrics["count"] == 2
    assert metrics["split"] == "test"
    assert sum(map(sum, metrics["confusion_matrix"])) == 2
    assert {"accuracy", "log_loss", "roc_auc", "per_class"} <= set(metrics)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    assert "accuracy" in out


def test_data_prepare_command(tmp_path, kaggle_folder, capsys):
    code = main(["data", "prepare", str(kaggle_folder), str(tmp_path / "out"), "--per-class", "10", "--quiet"])
    assert code == 0
    assert "train: 8 cat, 8 dog" in capsys.readouterr().out
    assert (tmp_path / "out" / "manifest.csv").is_file()


def test_bad_config_override_is_a_one_line_error(capsys):
    assert main(["train", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogcat: error: Unknown key in [train]")
    assert err.count("\n") == 1


def test_console_entry_point_reports_bad_input_without_a_traceback(tmp_path, tiny_model_dir):
    (tmp_path / "bad.jpg").write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "dogcat.cli", "predict", str(tmp_path / "bad.jpg"), "--model",
         str(tiny_model_dir / "dog_cat_classifier.keras")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 1
    # The reason once, in the file's row; on stderr a one-line summary: no traceback, no backend chatter.
    assert result.stdout.splitlines()[1].endswith("error: not an image, or not a supported format (JPEG, PNG, WebP, HEIC, AVIF, BMP or GIF)")
    warning, summary = result.stderr.splitlines()
    assert warning.startswith("dogcat: warning: no ")  # the tiny model has no detector beside it
    assert summary == "dogcat: 1 of 1 file(s) could not be read; their rows say why"


def test_predict_explain_writes_one_overlay_per_photo_named_in_the_output(photos, tmp_path, tiny_model_dir, capsys):
    from PIL import Image

    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (90, 60), (10, 200, 10)).save(other / "cat.0.jpg")  # same name, another folder
    out = tmp_path / "explained"
    model = str(tiny_model_dir / "dog_cat_classifier.keras")
    code = main(["predict", str(photos), str(other), "--model", model, "--csv", "--explain", str(out)])
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert code == 1  # the bad files still fail
    written = {path: row["explanation"] for path, row in rows.items() if not row["error"]}
    assert len(written) == 3
    assert len(set(written.values())) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in written.values())
    for path, overlay_path in written.items():
        with Image.open(overlay_path) as shown, Image.open(path) as photo:
            assert shown.size == photo.size
    assert all(row["explanation"] == "" for row in rows.values() if row["error"])

    code = main(["predict", str(other / "cat.0.jpg"), "--model", model, "--json", "--explain", str(out)])
    assert json.loads(capsys.readouterr().out)["explanation"] == written[str(other / "cat.0.jpg")]
    main(["predict", str(other / "cat.0.jpg"), "--model", model, "--json"])
    assert "explanation" not in json.loads(capsys.readouterr().out)


def test_help_and_argument_errors_do_not_import_the_inference_stack():
    # Every command builds the parser first; a parser that imports NumPy (or worse, a Keras
    # backend) makes `dogcat --help` and typos cost a second before anything is said.
    probe = ("import sys\nfrom dogcat.cli import _parser\n_parser()\n"
             "heavy = sorted(m for m in ('numpy', 'keras', 'onnxruntime', 'dogcat.inference') if m in sys.modules)\n"
             "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# --- hardening, round two: hostile input to the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["stale", "damaged"])
def test_auto_says_in_one_line_why_it_fell_back_to_keras(tmp_path, capsys, damage):
    """A stale or damaged ONNX twin: predict still answers, through Keras, and says why and how to fix it."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(REPO / "models", folder, ignore=shutil.ignore_patterns("*.png", "*.md", "*.int8.onnx"))
    onnx = folder / "dog_cat_classifier.onnx"
    if damage == "stale":  # an export of another .keras: same layout, other hash
        import onnx as onnx_lib

        proto = onnx_lib.load(onnx)
        for entry in proto.metadata_props:
            if entry.key == "dogcat_keras_sha256":
                entry.value = "0" * 64
        onnx_lib.save(proto, onnx)
    else:
        onnx.write_bytes(onnx.read_bytes()[:100_000])
    model = folder / "dog_cat_classifier.keras"
    assert main(["predict", "--model", str(model), str(REPO / "demos" / "examples" / "cat-chelsea.jpg")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if str(onnx) in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"dogcat: warning: {onnx} ")
    assert f"`dogcat export {model}`" in warnings[0]
    assert warnings[0].endswith("using Keras instead, which is slower to start and to run")


def test_a_model_without_an_onnx_twin_falls_back_without_a_warning(tiny_model_dir):
    """No twin at all is a plain Keras model, not a problem to report."""
    from dogcat.inference import Classifier

    classifier = Classifier.from_path(tiny_model_dir / "dog_cat_classifier.keras")
    assert (classifier.runtime, classifier.runtime_warning) == ("keras", None)


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_predict_explain_into_a_file_stops_before_any_work(tmp_path, capsys, where):
    target = tmp_path / "overlays"
    target.write_text("not a folder")
    if where == "under-a-file":
        target = target / "explain"
    code = main(["predict", "--model", str(tmp_path / "no-such-model.keras"), "--explain", str(target),
                 str(REPO / "demos" / "examples" / "cat-chelsea.jpg")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err  # before the model is even looked for
    assert err[0].startswith(("dogcat: error: --explain must name a folder that can be made (a file is in the way)",
                              "dogcat: error: Cannot write overlays into the --explain folder (")), err
    assert err[0].endswith(f"Received: explain={str(target)!r}"), err


def test_predict_explain_makes_a_missing_folder_and_its_parents(tmp_path, tiny_model_dir):
    target = tmp_path / "out" / "explain"  # the README's `--explain out/explain` in a fresh folder
    photo = tmp_path / "cat.png"
    drawn_photo("cat", 2, size=96).save(photo)
    assert main(["predict", "--model", str(tiny_model_dir / "dog_cat_classifier.keras"), "--explain", str(target),
                 str(photo)]) == 0
    assert target.is_dir()


def test_train_on_a_missing_dataset_says_how_to_make_one(tmp_path, capsys):
    missing = tmp_path / "data" / "dogcat-4k"
    code = main(["train", "--config", str(REPO / "configs" / "default.toml"), f"data.dir={missing}", "train.epochs=3",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert f"make one with `dogcat data prepare PHOTOS {missing}`, or point at a prepared one (dogcat train: " \
           "data.dir=PATH)" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_tune_refuses_a_cache_size_that_is_not_a_number_in_one_line(tmp_path, capsys, value):
    code = main(["tune", "--out", str(tmp_path / "search"), "--cache-gib", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"dogcat: error: --cache-gib must be a finite number, 0 or more. Received: cache_gib={float(value)}"]
    assert not (tmp_path / "search").exists()


def test_more_head_epochs_than_epochs_is_refused_in_one_line(capsys):
    code = main(["train", "train.epochs=10", "train.head_epochs=99"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dogcat: error: train.head_epochs must be at most train.epochs (10). Received: train.head_epochs=99"]


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_predict_exits_130_with_at_most_one_line(tmp_path):
    """SIGINT from start-up (imports, the ONNX Runtime load) to classifying: never a traceback, never
    ignored (an interrupt inside ONNX Runtime's import once came out as ImportError, and `auto` went on
    in Keras for 20 s)."""
    import shutil
    import signal
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(1000):  # enough to outlast the last offset (2,000 photos take under 7 s on 2 cores)
        shutil.copy(REPO / "demos" / "examples" / "cat-chelsea.jpg", photos / f"{index}.jpg")
    outcomes = []
    # From 0.08 s: before that a SIGINT can land in Python's own start-up, before any line of dogcat runs.
    for offset in (0.08, 0.1, 0.13, 0.17, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.3, 1.7, 2.2):
        process = subprocess.Popen([sys.executable, "-m", "dogcat", "predict", str(photos)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(offset)
        if process.poll() is not None:
            break  # finished before this moment: every later offset is later still
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        outcomes.append((offset, process.returncode, [line for line in err.splitlines() if line.strip()]))
    assert len(outcomes) >= 8, outcomes  # the run lasted past start-up
    bad = [(offset, code, lines[-3:]) for offset, code, lines in outcomes if code != 130 or len(lines) > 1]
    assert not bad, bad


def test_ctrl_c_while_the_command_installs_its_handler_exits_130_in_one_line():
    """The window CI once hit (a SIGINT 0.08 s in): the `dogcat` command imports its SIGINT handler
    before installing it; an interrupt there is one line and 130, not a traceback."""
    interrupt_the_import = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dogcat.artifacts':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['dogcat', '--help']\n"
        "from dogcat.cli import run\n"
        "run()\n")
    result = subprocess.run([sys.executable, "-c", interrupt_the_import], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr.strip().splitlines()) == (130, ["dogcat: interrupted"])


def test_ctrl_c_during_the_onnx_load_is_an_interrupt_not_a_fallback(monkeypatch):
    """An interrupt inside ONNX Runtime's import can surface as ImportError; once the command's
    SIGINT handler noted it, the load re-raises it instead of falling back to Keras."""
    import dogcat.artifacts
    import dogcat.runtimes
    from dogcat.inference import Classifier

    def interrupted_load(path, threads=1):
        try:
            dogcat.artifacts.note_interrupt()
        except KeyboardInterrupt:
            raise ImportError("initialization of onnxruntime failed") from None

    monkeypatch.setattr(dogcat.runtimes, "OnnxRunner", interrupted_load)
    monkeypatch.setattr(dogcat.artifacts, "_INTERRUPTED", dogcat.artifacts.threading.Event())
    with pytest.raises(KeyboardInterrupt):
        Classifier.from_path()


def test_an_onnx_twin_damaged_inside_its_weights_is_caught_by_its_own_sha256(tmp_path):
    """One flipped byte in a weight: the metadata (the .keras tie) is intact and ONNX Runtime loads it,
    so only SHA256SUMS beside the model can tell; auto then serves the .keras and says why."""
    import shutil

    from dogcat.inference import Classifier

    folder = tmp_path / "model"
    shutil.copytree(REPO / "models", folder, ignore=shutil.ignore_patterns("*.png", "*.md", "*.int8.onnx"))
    onnx = folder / "dog_cat_classifier.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the initializers, which are most of the file
    onnx.write_bytes(bytes(data))
    classifier = Classifier.from_path(folder / "dog_cat_classifier.keras")
    assert classifier.runtime == "keras"
    assert classifier.runtime_warning.startswith(f"{onnx} does not match its sha256 in {folder / 'SHA256SUMS'}")
    (folder / "SHA256SUMS").unlink()  # without the file, the damage goes unseen: what the check is for
    assert Classifier.from_path(folder / "dog_cat_classifier.keras").runtime == "onnx"


def test_missing_files_and_empty_globs_are_reported_once_in_their_place(photos, tiny_model_dir, capsys):
    code = main(["predict", str(photos / "nope.jpg"), str(photos / "cat.0.jpg"), str(photos / "*.heic"),
                 str(photos / "dog.0.jpg"), "--model", str(tiny_model_dir / "dog_cat_classifier.keras")])
    out, err = capsys.readouterr()
    assert code == 1
    rows = out.splitlines()[1:]
    assert [row.split()[0].rsplit("/", 1)[-1] for row in rows] == ["nope.jpg", "cat.0.jpg", "*.heic", "dog.0.jpg"]
    assert rows[0].endswith("error: no such file")
    assert rows[2].endswith("error: no file matches this pattern")
    assert "nope.jpg" not in err  # once: in its row
    assert err.splitlines()[-1] == "dogcat: 2 of 4 file(s) could not be read; their rows say why"


def test_predict_streams_its_rows_while_the_rest_are_still_being_classified(tmp_path):
    """The first rows reach a pipe after the first batch, not after the last (`| head` saves the rest)."""
    import shutil
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(600):
        shutil.copy(REPO / "demos" / "examples" / "cat-chelsea.jpg", photos / f"{index:03}.jpg")
    process = subprocess.Popen([sys.executable, "-m", "dogcat", "predict", "--json", str(photos)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = process.stdout.readline()
        first_at = time.monotonic()
        rest = process.stdout.read().splitlines()
        last_at = time.monotonic()
    finally:
        process.kill()
        process.wait()
    assert json.loads(first)["path"].endswith("000.jpg")
    assert len(rest) == 599
    # At ~100-200 photos a second the other 599 take seconds; printed at the end, they would come at once.
    assert last_at - first_at > 1.0, last_at - first_at


def test_app_on_a_busy_port_says_to_pick_another_in_one_line(capsys, monkeypatch):
    import os
    import socket

    # Were the port not checked, `dogcat app` would replace this process with Streamlit.
    monkeypatch.setattr(os, "execve", lambda *_: pytest.fail("Streamlit was started on a busy port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["app", "--port", str(port)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dogcat: error: Cannot serve on 127.0.0.1:{port} (Address already in use): another program uses it; "
        f"pick a free one with --port N. Received: port={port}"]


# --- names that are not UTF-8, and overlays that cannot be written, never cost a row ---------------


@pytest.fixture
def latin1_folder(tmp_path) -> Path:
    """A photo named in Latin-1 (`caf\\xe9.jpg`, as in old zips), beside one named in UTF-8."""
    from tests.imagegen import write_pet

    folder = tmp_path / "photos"
    write_pet(folder / "chat-é.jpg", "cat", 0)
    write_pet(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"), "cat", 1)
    return folder


@pytest.mark.parametrize("form", ["--csv", "--json", "table"])
def test_a_file_name_that_is_not_utf8_is_written_as_printable_utf8(latin1_folder, tiny_model_dir, tmp_path, capsys, form):
    """The name's bytes reached CSV (pandas could not read it), lone surrogates reached JSON, and a strict
    UTF-8 stdout raised; --explain raised in `overlay_filename` and lost the rows."""
    import io
    import json

    import pandas as pd

    from dogcat.cli import main

    explain = tmp_path / "overlays"
    args = ["predict", str(latin1_folder), "--model", str(tiny_model_dir), "--runtime", "keras", "--explain", str(explain)]
    assert main(args + ([] if form == "table" else [form])) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # strictly: a strict UTF-8 stdout takes it
    shown = f"{latin1_folder}/caf\\xe9.jpg"
    if form == "--csv":
        rows = pd.read_csv(io.BytesIO(out.encode("utf-8")), encoding="utf-8")
        assert sorted(rows["path"]) == sorted([shown, f"{latin1_folder}/chat-é.jpg"])
    elif form == "--json":
        rows = [json.loads(line) for line in out.splitlines()]
        assert sorted(row["path"] for row in rows) == sorted([shown, f"{latin1_folder}/chat-é.jpg"])
        assert all(row["explanation"] for row in rows)
    else:
        assert shown in out
    assert len(list(explain.glob("*.png"))) == 2


def test_explain_into_a_folder_that_cannot_be_written_is_one_line_before_any_work(tiny_model_dir, tmp_path, capsys):
    from dogcat.cli import main
    from tests.imagegen import write_pet

    photo = write_pet(tmp_path / "cat.jpg", "cat", 0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere, except in what the kernel makes up
        locked = Path("/proc/1")
    try:
        assert main(["predict", str(photo), "--model", str(tiny_model_dir), "--explain", str(locked)]) == 2
    finally:
        (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert "Cannot write overlays into the --explain folder" in err
    assert len(err.strip().splitlines()) == 1


def test_overlays_that_stop_being_writable_mid_run_lose_no_row(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A disk that fills up mid-run: a traceback lost every row after it."""
    import json

    import dogcat.explain
    from dogcat.cli import main
    from tests.imagegen import write_pet

    photos = [str(write_pet(tmp_path / f"cat{i}.jpg", "cat", i)) for i in range(3)]

    def full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dogcat.explain, "write_overlays", full)
    assert main(["predict", *photos, "--model", str(tiny_model_dir), "--runtime", "keras", "--json",
                 "--explain", str(tmp_path / "overlays")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["path"] for row in rows] == photos
    assert all(row["explanation"] is None and row["verdict"] for row in rows)
    assert captured.err.count("No space left on device") == 1
