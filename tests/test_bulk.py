"""Bulk work (`dogcat[ray]`): the int8 twin's contract and `dogcat batch` on a real Ray cluster.

Run by `nox -s bulk` (marker `bulk`), which installs the ray extra and no Keras backend: the
batch job and the int8 runtime need only ONNX Runtime. The cluster is started by the fixture
with `ray start --head` in its own process group, joined with `--address` as a user would, and
stopped after the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bulk
# `ray start` turns token authentication on (its token in ~/.ray/auth_token) and a client opts in
# with this variable, as the README tells users to; Ray reads it once, when it is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (nox -s bulk)")

from dogcat.artifacts import INT8_ONNX_FILENAME, MODEL_FILENAME  # noqa: E402
from dogcat.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models"


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Path:
    """The shipped model's own dataset, prepared again (same seed, same manifest)."""
    from dogcat.data import prepare

    out = tmp_path_factory.mktemp("bulk") / "dogcat-4k"
    prepare(shared_data, out, per_class=2000, seed=42, progress=False)
    return out


@pytest.fixture(scope="module")
def int8_model(dataset, tmp_path_factory) -> Path:
    """A copy of the shipped model folder with its int8 twin, written by `dogcat export --int8`."""
    folder = tmp_path_factory.mktemp("model")
    for item in SHIPPED.iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    assert main(["export", str(folder / MODEL_FILENAME), "--int8", "--data", str(dataset)]) == 0
    return folder / MODEL_FILENAME


def _outside_photos(shared_data: Path, dataset: Path) -> tuple[list[Path], np.ndarray]:
    used = {line.split(",", 1)[0].rsplit("/", 1)[-1] for line in (dataset / "manifest.csv").read_text().splitlines()[1:]}
    paths = sorted(p for p in shared_data.glob("*.jpg") if p.name not in used)
    return paths, np.array([int(p.name.startswith("dog")) for p in paths])


def test_int8_twin_records_its_keras_file_and_is_refused_when_stale(int8_model, tmp_path):
    from dogcat.artifacts import ArtifactError
    from dogcat.inference import Classifier

    assert Classifier.from_path(int8_model, runtime="onnx-int8").runtime == "onnx-int8"
    assert Classifier.from_path(int8_model).runtime == "onnx", "auto must stay float32"
    stale = tmp_path / "stale"
    shutil.copytree(int8_model.parent, stale)
    (stale / MODEL_FILENAME).write_bytes((stale / MODEL_FILENAME).read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"different \.keras file .*export --int8"):
        Classifier.from_path(stale / MODEL_FILENAME, runtime="onnx-int8")


def test_int8_keeps_float32s_labels_accuracy_and_log_loss_on_real_photos(int8_model, dataset, shared_data):
    """The int8 contract (#16): labels agree on >= 99.5%, accuracy within 0.3 points and log loss
    within 0.01 of float32, on the test split and on the 1,000 Kaggle photos outside the dataset;
    and verdicts ("neither" included) agree on >= 99.5% too."""
    from dogcat.data import read_split
    from dogcat.inference import Classifier

    floats = Classifier.from_path(int8_model, runtime="onnx")
    int8 = Classifier.from_path(int8_model, runtime="onnx-int8")
    test = read_split(dataset, "test")
    for name, (paths, labels) in {"test": (test.paths, test.labels),
                                  "outside": _outside_photos(shared_data, dataset)}.items():
        assert len(paths) >= 400, name
        scores = {}
        for runtime, classifier in (("float32", floats), ("int8", int8)):
            predictions = classifier.predict([str(p) for p in paths])
            assert not [p for p in predictions if p.error]
            dog = np.array([p.probabilities["dog"] for p in predictions])
            chosen = np.where(labels == 1, dog, 1 - dog)
            scores[runtime] = ((dog > 0.5).astype(int), float(np.mean((dog > 0.5) == labels)),
                               float(-np.mean(np.log(np.clip(chosen, 1e-7, 1)))), [p.verdict for p in predictions])
        agreement = float(np.mean(scores["float32"][0] == scores["int8"][0]))
        assert agreement >= 0.995, (name, agreement)
        assert abs(scores["float32"][1] - scores["int8"][1]) <= 0.003 + 1e-9, (name, scores)
        assert abs(scores["float32"][2] - scores["int8"][2]) <= 0.01, (name, scores)
        verdicts = float(np.mean(np.array(scores["float32"][3]) == np.array(scores["int8"][3])))
        assert verdicts >= 0.995, (name, verdicts)


# --- dogcat batch on Ray --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster of its own: `ray start --head --block`, stopped with its process group."""
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--num-cpus", "2", "--port", str(port), "--block",
         "--include-dashboard", "false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([str(ray_cli), "status", "--address", address], capture_output=True).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head failed: {head.stderr.read().decode()[-2000:]}")
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops its own processes when told to
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    assert subprocess.run([str(ray_cli), "status", "--address", address], capture_output=True).returncode != 0, \
        "the cluster outlived its fixture"


@pytest.fixture
def photo_folder(shared_data, tmp_path) -> Path:
    """24 real photos (some in a sub-folder) and four files no decoder can use."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, photo in enumerate(_real_photos(shared_data, 12)):
        shutil.copy(photo, (folder / "more" if index % 3 == 0 else folder) / photo.name)
    (folder / "text.jpg").write_text("not a photo")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_real_photos(shared_data, 13)[-1].read_bytes()[:600])
    (folder / "more" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + (60000).to_bytes(4, "big") * 2
                                               + b"\x08\x02\0\0\0" + b"\0" * 64)
    return folder


def _real_photos(shared_data: Path, per_class: int) -> list[Path]:
    """The first `per_class` cats, then as many dogs, of the Kaggle sample (its numbers have gaps)."""
    def number(path: Path) -> int:
        return int(path.name.split(".")[1])

    return [photo for label in ("cat", "dog")
            for photo in sorted(shared_data.glob(f"{label}.*.jpg"), key=number)[:per_class]]


def _rows(out: Path) -> list[dict]:
    import pyarrow.dataset as ds

    return ds.dataset(out, format="parquet").to_table().to_pylist()


def _predict_json(paths: list[str], model: Path, runtime: str, capsys) -> dict[str, dict]:
    main(["predict", *paths, "--json", "--model", str(model), "--runtime", runtime])
    return {row["path"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_batch_on_a_cluster_gives_predicts_rows_and_an_error_row_per_bad_file(
        ray_cluster, int8_model, photo_folder, tmp_path, capsys, runtime):
    out = tmp_path / "out"
    code = main(["batch", str(photo_folder), "--out", str(out), "--model", str(int8_model),
                 "--runtime", runtime, "--address", ray_cluster])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # some files could not be classified
    assert "28 file(s) classified (4 with an error)" in captured.out
    rows = {row["path"]: row for row in _rows(out)}
    expected = _predict_json([str(photo_folder)], int8_model, runtime, capsys)
    assert sorted(rows) == sorted(expected)
    assert len(rows) == 28
    for path, row in rows.items():
        cli = expected[path]
        assert (row["verdict"], row["label"], bool(row["error"])) == (cli["verdict"], cli["label"], bool(cli["error"])), path
        if cli["error"]:
            assert row["error"] == cli["error"]
            assert row["p_cat"] is None
            continue
        assert abs(row["p_cat"] - cli["probabilities"]["cat"]) <= 1e-6, path
        assert abs(row["p_dog"] - cli["probabilities"]["dog"]) <= 1e-6, path
        assert [row["width"], row["height"]] == cli["size"]
        assert row["looks_like"] == cli["looks_like"]["name"], path  # the detector's ImageNet head, on every node
        assert abs(row["p_looks_like"] - cli["looks_like"]["probability"]) <= 1e-6, path
    assert {Path(p).name for p, r in rows.items() if r["error"]} == {
        "text.jpg", "empty.png", "truncated.jpg", "huge.png"}


def test_batch_rerun_skips_done_files_and_sets_aside_a_cut_short_file(ray_cluster, int8_model, photo_folder, tmp_path, capsys):
    out = tmp_path / "out"
    photos = sorted(str(p) for p in photo_folder.glob("*.*.jpg"))
    first = photos[:2]
    assert main(["batch", *first, "--out", str(out), "--model", str(int8_model), "--address", ray_cluster]) == 0
    assert main(["batch", *first, "--out", str(out), "--model", str(int8_model), "--address", ray_cluster]) == 0
    assert "all 2 file(s) are already in" in capsys.readouterr().err
    (out / "zz-cut-short.parquet").write_bytes(b"PAR1 not finished")
    more = [*first, photos[-1]]
    assert main(["batch", *more, "--out", str(out), "--model", str(int8_model), "--address", ray_cluster]) == 0
    captured = capsys.readouterr()
    assert "1 file(s) classified (0 with an error), 2 already in" in captured.out
    assert "could not be read" in captured.err
    assert (out / "_incomplete.zz-cut-short.parquet").is_file()
    paths = [row["path"] for row in _rows(out)]
    assert sorted(paths) == sorted(more), "every file once: none repeated, none lost"


def test_batch_without_an_address_starts_and_stops_a_local_ray(int8_model, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    cat, dog = _real_photos(shared_data, 1)
    photos = [str(cat), f"file://{dog}"]  # a URI goes through pyarrow
    assert main(["batch", *photos, "--out", str(out), "--model", str(int8_model)]) == 0
    assert not ray.is_initialized()
    rows = {row["path"]: row for row in _rows(out)}
    assert [rows[p]["label"] for p in photos] == ["cat", "dog"]


def test_batch_refuses_a_model_without_its_onnx_twin_in_one_line(int8_model, shared_data, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (MODEL_FILENAME, "class_names.pkl"):
        shutil.copy(int8_model.with_name(name), bare / name)
    assert main(["batch", str(_real_photos(shared_data, 1)[0]), "--out", str(tmp_path / "out"),
                 "--model", str(bare / MODEL_FILENAME), "--runtime", "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert INT8_ONNX_FILENAME in err, err
    assert "dogcat export --int8" in err, err


def test_the_shipped_int8_twin_is_tied_to_the_shipped_model_and_gives_its_verdicts():
    from dogcat.inference import Classifier

    int8 = Classifier.from_path(SHIPPED / MODEL_FILENAME, runtime="onnx-int8")
    floats = Classifier.from_path(SHIPPED / MODEL_FILENAME, runtime="onnx")
    examples = sorted(str(p) for p in (REPO / "demos" / "examples").glob("*.jpg"))
    assert len(examples) >= 4
    assert [p.verdict for p in int8.predict(examples)] == [p.verdict for p in floats.predict(examples)]
