"""`dogcat batch` (`dogcat[ray]`) on a real Ray cluster; the int8 twin's own contract is test_int8.py's.

Run by `nox -s bulk` (marker `bulk`), which installs the ray extra and no Keras backend: the
batch job and the int8 runtime need only ONNX Runtime. The cluster is started by the fixture
with `ray start --head` in its own process group, joined with `--address` as a user would, and
stopped after the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bulk
# `ray start` turns token authentication on (its token in ~/.ray/auth_token) and a client opts in
# with this variable, as the README tells users to; Ray reads it once, when it is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (nox -s bulk)")

from dogcat.artifacts import INT8_ONNX_FILENAME, MODEL_FILENAME  # noqa: E402
from dogcat.cli import main  # noqa: E402
from tests.helpers import REPO, SHIPPED  # noqa: E402

SHIPPED_MODEL = SHIPPED / MODEL_FILENAME  # its int8 twin ships beside it
# `FILE:LINE: CategoryWarning: message`, as Python prints a warning (a Ray worker's line has a prefix).
_WARNING_LINE = re.compile(r"(?P<file>[^\s()]+\.py):\d+: (?P<category>\w*Warning)\b")


def _dogcat_warnings(stderr: str, packages: tuple[Path, ...] | None = None) -> list[str]:
    """The warning lines raised from dogcat's own modules, judged by the file that raised them.

    Ray attributes a deprecation to its caller's file, so a deprecated Ray API that dogcat calls shows
    there. A word in the path is no test: in a checkout named `dogcat` (the README's clone line) Ray's
    own warnings print `<checkout>/.nox/bulk/.../ray/...` and would fail the job.
    """
    import dogcat

    packages = packages or (Path(dogcat.__file__).resolve().parent, REPO / "dogcat")
    return [line for line in stderr.splitlines()
            if (found := _WARNING_LINE.search(line))
            and any(Path(found["file"]).resolve().is_relative_to(package) for package in packages)]


# --- dogcat batch on Ray --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


RAY_CLI = Path(sys.executable).with_name("ray")


class Cluster:
    """Ray nodes started as a user would (`ray start --head`, then `ray start --address`), each
    with `--block` in its own process group, so that one can be killed alone and all stopped."""

    def __init__(self, cpus: list[int]):
        # `ray start` refuses to run with token auth on and no token yet (a bare CI machine): make one.
        subprocess.run([str(RAY_CLI), "get-auth-token", "--generate"], capture_output=True, check=True)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        try:
            self._start(["--head", "--port", str(self.port), "--include-dashboard", "false"], cpus[0], 1)
            for index, count in enumerate(cpus[1:], start=2):
                self._start(["--address", self.address], count, index)
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], cpus: int, nodes: int) -> None:
        self.nodes.append(subprocess.Popen(
            [str(RAY_CLI), "start", *args, "--num-cpus", str(cpus), "--block", "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
        deadline = time.monotonic() + 90
        while self.alive_nodes() < nodes:
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start {' '.join(args)} failed: {self.nodes[-1].stderr.read().decode()[-2000:]}")
            time.sleep(1)

    def alive_nodes(self) -> int:
        status = subprocess.run([str(RAY_CLI), "status", "--address", self.address], capture_output=True, text=True)
        if status.returncode != 0:
            return 0
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def kill_raylet(self, node: int) -> list[int]:
        """kill -9 the raylet of node `node` (0: the head), as a machine that loses power would."""
        listed = subprocess.run(["pgrep", "-g", str(self.nodes[node].pid), "-f", "raylet/raylet"],
                                capture_output=True, text=True).stdout.split()
        for pid in map(int, listed):
            os.kill(pid, signal.SIGKILL)
        return [int(pid) for pid in listed]

    def stop(self) -> None:
        for node in reversed(self.nodes):  # --block: each stops its own processes when told to
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a loaded machine: the head can take a minute to stop
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=20)
        assert subprocess.run([str(RAY_CLI), "status", "--address", self.address], capture_output=True).returncode != 0, \
            "the cluster outlived its fixture"


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster of its own (2 CPUs), stopped after the module."""
    cluster = Cluster([2])
    try:
        yield cluster.address
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def two_nodes():
    """Two nodes of one CPU each on this machine (a head and a worker), as on a cluster of small machines.
    Shared to save a start (about 30 s): the test that kills the worker uses it last."""
    cluster = Cluster([1, 1])
    try:
        yield cluster
    finally:
        cluster.stop()


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
        # Every column of predict's row, the detector's ImageNet head's on every node too.
        assert row == {**{key: pytest.approx(value, abs=1e-6) for key, value in cli.items()}, "node": row["node"]}, path
    assert {Path(p).name for p, r in rows.items() if r["error"]} == {
        "text.jpg", "empty.png", "truncated.jpg", "huge.png"}


def test_batch_reads_phone_photos_and_counts_and_names_the_files_it_skips(ray_cluster, shared_data, tmp_path, capsys):
    from PIL import Image

    import dogcat.preprocessing  # noqa: F401  (registers HEIF with Pillow, to write the test's HEIC)

    folder = tmp_path / "photos"
    folder.mkdir()
    cat, dog = _real_photos(shared_data, 1)
    with Image.open(cat) as photo:
        photo.save(folder / "IMG_0001.HEIC", "HEIF", quality=90)
    with Image.open(dog) as photo:
        photo.save(folder / "IMG_0002.avif", "AVIF", quality=90)
    shutil.copy(cat, folder / cat.name)
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    out = tmp_path / "out"
    assert main(["batch", str(folder), "--out", str(out), "--model", str(SHIPPED_MODEL), "--address", ray_cluster]) == 0
    captured = capsys.readouterr()
    assert "3 file(s) classified (0 with an error), 0 already in" in captured.out
    assert captured.out.rstrip().endswith("3 found, 1 skipped (not an image by their extension)"), captured.out
    assert "dogcat: skipped 1 file(s) in the folders given" in captured.err, captured.err
    assert str(folder / "notes.pdf") in captured.err, captured.err
    rows = {Path(row["path"]).name: row for row in _rows(out)}
    assert sorted(rows) == sorted([cat.name, "IMG_0001.HEIC", "IMG_0002.avif"])
    expected = _predict_json([str(folder)], SHIPPED_MODEL, "onnx", capsys)
    for row in rows.values():
        assert row["error"] is None, row
        assert (row["verdict"], row["label"]) == (expected[row["path"]]["verdict"], expected[row["path"]]["label"])
    assert (rows["IMG_0001.HEIC"]["label"], rows["IMG_0002.avif"]["label"]) == ("cat", "dog")


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


def test_a_file_name_that_is_not_utf8_is_one_row_and_a_rerun_finds_everything_done(
        ray_cluster, int8_model, shared_data, tmp_path, capsys):
    """`caf\\xe9.jpg` (Latin-1, as in old zips) stopped the job at its block, and every rerun there."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = _real_photos(shared_data, 4)
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(photos[0], os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    out = tmp_path / "out"
    command = ["batch", str(folder), "--out", str(out), "--model", str(int8_model), "--address", ray_cluster]
    assert main(command) == 0, capsys.readouterr().err
    rows = {row["path"]: row for row in _rows(out)}
    assert len(rows) == len(photos) + 1
    assert rows[f"{folder}/caf\\xe9.jpg"]["error"] is None
    assert rows[f"{folder}/caf\\xe9.jpg"]["p_cat"] == rows[str(folder / photos[0].name)]["p_cat"]
    assert main(command) == 0
    assert f"all {len(photos) + 1} file(s) are already in" in capsys.readouterr().err


def test_batch_gives_the_classifiers_answers_with_the_models_own_settings(ray_cluster, tmp_path, capsys):
    """tests/test_consistency.py's check for batch: its actors serve the model's config.toml (they served the defaults)."""
    from dogcat.inference import Classifier
    from tests.test_consistency import model_with_own_settings, ten_photos

    model, photos = model_with_own_settings(tmp_path / "model"), ten_photos(tmp_path / "photos")
    expected = Classifier.from_path(model).predict(photos, names=[str(p) for p in photos])
    assert main(["batch", *map(str, photos), "--out", str(tmp_path / "out"), "--model", str(model),
                 "--address", ray_cluster]) == 1, capsys.readouterr().err  # the broken file
    rows = {row["path"]: row for row in _rows(tmp_path / "out")}
    assert sorted(rows) == [str(p) for p in photos]
    for prediction in expected:
        for key, value in prediction.as_row(["cat", "dog"]).items():  # every column but the node
            expected_value = pytest.approx(value, abs=1e-6) if isinstance(value, float) else value
            assert rows[prediction.source][key] == expected_value, (prediction.source, key)
    assert "unsure" in [p.verdict for p in expected]


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


# --- sizing from the cluster, several nodes, a node lost, retries, failing fast -------------------


def test_the_plan_gives_every_cpu_an_actor_and_leaves_room_to_write_whatever_the_nodes_size():
    """The old deadlock: one 1-CPU actor per 1-CPU node left no CPU for the rest of the job, 0 rows forever."""
    from dogcat.batch import SCORING_SHARE, plan_for

    for cpus, actors in (([1], 1), ([1, 1], 2), ([2], 2), ([2, 2], 4), ([16], 16), ([64, 64], 128), ([1, 64], 65),
                         ([0.5, 0.5], 2)):
        plan = plan_for(cpus)
        assert plan.actors == actors, (cpus, plan)
        assert plan.threads == 1, (cpus, plan)
        assert plan.write_cpus > 0, (cpus, plan)
        for node in cpus:  # a node filled with actors still has room for a Parquet write
            assert node - plan.actor_cpus * max(1, int(node / min(1, min(cpus)))) >= plan.write_cpus - 1e-9, (cpus, plan)
    override = plan_for([64], actors=4)
    assert (override.actors, override.actor_cpus, override.threads) == (4, 16 * SCORING_SHARE, 16)
    assert plan_for([1, 1], actors=5).actor_cpus * 5 <= 2 * SCORING_SHARE + 1e-9


def test_an_actor_runs_onnx_runtime_on_the_threads_it_was_given():
    from dogcat.inference import Classifier

    classifier = Classifier.from_path(SHIPPED_MODEL, runtime="onnx-int8", threads=3)
    for runner in (classifier.runner, classifier.runner.float32_twin):
        assert runner.session.get_session_options().intra_op_num_threads == 3
    assert classifier.predict([str(REPO / "demos" / "examples" / sorted(os.listdir(REPO / "demos" / "examples"))[0])])


def _link_photos(shared_data: Path, folder: Path, per_class: int) -> list[str]:
    folder.mkdir(parents=True)
    for photo in _real_photos(shared_data, per_class):
        os.symlink(photo, folder / photo.name)
    return sorted(str(p) for p in folder.iterdir())


def _batch(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dogcat batch` in a process of its own, as a user runs it; a job that hangs fails the test."""
    return subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-m", "dogcat.cli", "batch", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_batch_on_two_one_cpu_nodes_scores_on_both_and_gives_predicts_rows(two_nodes, shared_data,
                                                                          tmp_path, capsys):
    photos = _link_photos(shared_data, tmp_path / "photos", 300)  # 600: eight blocks (four per actor)
    out = tmp_path / "out"
    job = _batch(str(tmp_path / "photos"), "--out", str(out), "--model", str(SHIPPED_MODEL), "--address", two_nodes.address)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "600 file(s) classified (0 with an error)" in job.stdout
    assert "2 actor(s) of 0.8 CPU" in job.stderr, job.stderr[-3000:]
    # No deprecated Ray API of dogcat's (`ray_remote_args`, removed in Ray 2.64); Ray's own are its business.
    assert not _dogcat_warnings(job.stderr), job.stderr[-3000:]
    rows = _rows(out)
    assert sorted(row["path"] for row in rows) == photos
    nodes = {row["node"] for row in rows}
    assert len(nodes) == 2, f"one node did all the scoring: {nodes}"
    expected = _predict_json(photos, SHIPPED_MODEL, "onnx", capsys)
    for row in rows:
        cli = expected[row["path"]]
        assert (row["verdict"], row["label"], row["error"]) == (cli["verdict"], cli["label"], None), row["path"]
        assert abs(row["p_cat"] - cli["p_cat"]) <= 1e-6, row["path"]
        assert abs(row["p_dog"] - cli["p_dog"]) <= 1e-6, row["path"]


def test_only_warnings_raised_by_dogcats_own_files_fail_the_two_node_job(tmp_path):
    checkout = tmp_path / "dogcat"  # the folder the README's clone line makes
    package = checkout / "dogcat"
    ray_file = checkout / ".nox" / "bulk" / "lib" / "python3.11" / "site-packages" / "ray" / "data" / "context.py"
    ours = package / "batch.py"
    stderr = "\n".join([
        f"{ray_file}:412: DeprecationWarning: DataContext.use_push_based_shuffle is deprecated",
        f"(MapWorker(ClassifyBatch) pid=4242) {ray_file}:90: RayDeprecationWarning: something of Ray's own",
        "2026-12-06 13:40:00,000 INFO worker.py:1 -- Connecting to existing Ray cluster at dogcat-head:6379",
        f"{ours}:182: RayDeprecationWarning: `ray_remote_args` is deprecated and will be removed in Ray 2.64.",
        f"(MapWorker(ClassifyBatch) pid=4243) {ours}:301: UserWarning: one of ours in a worker",
    ])
    assert _dogcat_warnings(stderr, (package,)) == stderr.splitlines()[3:]
    assert _dogcat_warnings(stderr) == [], "a file outside this checkout's package is not dogcat's"


def test_a_node_killed_mid_job_loses_no_row_and_repeats_none(two_nodes, shared_data, tmp_path):
    photos = _link_photos(shared_data, tmp_path / "photos", 500)
    out = tmp_path / "out"
    command = [str(tmp_path / "photos"), "--out", str(out), "--model", str(SHIPPED_MODEL), "--address", two_nodes.address]
    job = subprocess.Popen([sys.executable, "-m", "dogcat.cli", "batch", *command], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.parquet")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, "the job ended before a node could be lost: give it more photos"
        assert two_nodes.kill_raylet(1), "no raylet found for the worker node"
        _, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    if job.returncode != 0:  # stopped: in one line, and the same command finishes the job
        assert job.returncode == 1, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("dogcat: error: the job stopped"), stderr[-3000:]
        assert "rerun the same command" in stderr
        again = _batch(*command)
        assert again.returncode == 0, again.stderr[-3000:]
    import pyarrow.parquet as pq

    counted = [p for p in out.iterdir() if p.suffix == ".parquet" and not p.name.startswith(("_", "."))]
    for part in counted:  # every file a reader counts is whole
        pq.read_table(part)
    paths = [row["path"] for row in _rows(out)]
    assert len(paths) == len(set(paths)), "a file has two rows"
    assert sorted(paths) == photos, "a file has no row"


def test_retry_errors_classifies_error_rows_again_and_keeps_one_row_per_file(ray_cluster, shared_data,
                                                                             tmp_path, capsys):
    folder = tmp_path / "photos"
    cat, other, dog, _ = _real_photos(shared_data, 2)
    folder.mkdir()
    for photo in (cat, dog):
        shutil.copy(photo, folder / photo.name)
    (folder / "later.jpg").write_bytes(b"")  # an upload not finished yet
    (folder / "broken.jpg").write_text("never a photo")
    common = [str(folder), "--out", str(tmp_path / "out"), "--model", str(SHIPPED_MODEL), "--address", ray_cluster]
    assert main(["batch", *common]) == 1
    (folder / "later.jpg").write_bytes(other.read_bytes())  # the upload is complete now
    assert main(["batch", *common]) == 0
    assert "all 4 file(s) are already in" in capsys.readouterr().err, "without --retry-errors, error rows stay done"
    assert main(["batch", *common, "--retry-errors"]) == 1  # broken.jpg is still broken
    rows = _rows(tmp_path / "out")
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in folder.iterdir()), "a retried file twice"
    captured = capsys.readouterr()
    assert "2 file(s) classified (1 with an error), 2 of them retried after an error, 2 already in" in captured.out
    by_name = {Path(row["path"]).name: row for row in rows}
    assert by_name["later.jpg"]["error"] is None
    assert by_name["later.jpg"]["label"] == "cat"
    assert by_name["broken.jpg"]["error"]
    assert main(["batch", *common]) == 0, "the retried rows count as done"


def test_a_mistyped_folder_or_an_unreachable_cluster_is_one_line_before_ray_starts(shared_data, tmp_path, capsys):
    started = time.monotonic()
    assert main(["batch", str(tmp_path / "photoz"), "--out", str(tmp_path / "out"), "--model", str(SHIPPED_MODEL)]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "No such file or folder" in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists(), "no row for a typo"
    # As a user meets it, in a process of its own (Ray, left to itself, retries the address for minutes).
    started = time.monotonic()
    try:
        job = _batch(str(_real_photos(shared_data, 1)[0]), "--out", str(tmp_path / "out"), "--model", str(SHIPPED_MODEL),
                     "--address", f"127.0.0.1:{_free_port()}", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("dogcat batch --address HOST:PORT with nothing there was still waiting after 30 s")
    assert time.monotonic() - started < 15
    assert job.returncode == 2, job.stderr
    assert job.stderr.count("\n") == 1, job.stderr
    assert "Cannot reach the Ray cluster" in job.stderr, job.stderr


def test_a_client_the_cluster_refuses_is_one_line_naming_the_fix(ray_cluster, shared_data, tmp_path):
    """The cluster (as `ray start` makes it with a token) and a client without the token, with no
    token at all, or with another machine's: each is one line naming the fix, exit 2, in under 15 s
    (Ray retried for 20 s into a 60-line traceback, or aborted in its C++ core)."""
    photo = str(_real_photos(shared_data, 1)[0])
    strangers = tmp_path / "other-machine"
    (strangers / ".ray").mkdir(parents=True)
    (strangers / ".ray" / "auth_token").write_text("0" * 64)
    bare = tmp_path / "bare-machine"
    bare.mkdir()
    without_mode = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    cases = [(without_mode, "uses token authentication: export RAY_AUTH_MODE=token (this machine's"),
             ({**without_mode, "HOME": str(bare)}, "uses token authentication: export RAY_AUTH_MODE=token and copy"),
             ({**os.environ, "HOME": str(bare)}, "RAY_AUTH_MODE=token, but this machine has no Ray token: copy"),
             ({**os.environ, "HOME": str(strangers)}, "refused this machine's token (not the head's): copy")]
    for env, expected in cases:
        started = time.monotonic()
        job = _batch(photo, "--out", str(tmp_path / "out"), "--model", str(SHIPPED_MODEL), "--address", ray_cluster,
                     env=env, timeout=60)
        assert time.monotonic() - started < 15, expected
        assert job.returncode == 2, job.stderr[-3000:]
        assert job.stderr.count("\n") == 1, job.stderr[-3000:]
        assert expected in job.stderr, job.stderr
        assert job.stderr.rstrip().endswith(f"Received: address={ray_cluster!r}"), job.stderr
    assert not (tmp_path / "out").exists()


def _readme_cluster_recipe() -> list[str]:
    """The shell lines of the README's cluster recipe (its bash block with `ray start --head`), as printed."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    (block,) = [block for block in blocks if "ray start --head" in block]
    return [line.strip() for line in block.splitlines() if shlex.split(line, comments=True)]


@pytest.mark.parametrize("machine", ["bare", "with a token already"])
def test_the_readmes_cluster_recipe_runs_as_printed(machine, shared_data, tmp_path):
    """Each line of the README's recipe, in a shell of its own, on a machine without a Ray token and on
    one that has one: two nodes on this machine (as the two-node test starts them: `--block` in a
    process group each, one CPU each), then the recipe's `dogcat batch` on local folders."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # a new shell: only what the recipe exports
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    if machine != "bare":  # a token made earlier, as Ray makes them
        subprocess.run([str(RAY_CLI), "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    before = (home / ".ray" / "auth_token").read_text() if machine != "bare" else None
    port, photos, out = _free_port(), tmp_path / "photos", tmp_path / "verdicts"
    _link_photos(shared_data, photos, 10)
    nodes: list[subprocess.Popen] = []
    lines = _readme_cluster_recipe()
    assert [shlex.split(line, comments=True)[:2] for line in lines] == [
        ["pip", "wheel"], ["pip", "install"], ["ray", "get-auth-token"], ["export", "RAY_AUTH_MODE=token"],
        ["ray", "start"], ["ray", "start"], ["dogcat", "batch"]]
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert f"dogcat_verdict-{version}-py3-none-any.whl[ray]" in lines[1], "the wheel's name is not what `pip wheel` makes"
    try:
        for line in lines[2:]:  # the installs are this environment's own
            words = shlex.split(line, comments=True)
            line = line.replace("HEAD_IP", "127.0.0.1").replace("6379", str(port))
            if words[0] == "export":
                name, value = words[1].split("=", 1)
                env[name] = value
            elif words[:2] == ["ray", "start"]:
                command = (line.split("#", 1)[0] + " --num-cpus 1 --disable-usage-stats --block"
                           + (" --include-dashboard false" if "--head" in words else ""))
                nodes.append(subprocess.Popen(["bash", "-c", command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, start_new_session=True))
                deadline = time.monotonic() + 90
                while _alive_nodes(f"127.0.0.1:{port}", env) < len(nodes):
                    if nodes[-1].poll() is not None or time.monotonic() > deadline:
                        said = nodes[-1].stderr.read().decode()
                        pytest.fail(f"{line!r} failed: {said[:1500]} ... {said[-1500:]}")
                    time.sleep(1)
            elif words[0] == "dogcat":
                line = line.replace("s3://bucket/photos/", f"{photos}/").replace("s3://bucket/verdicts/", f"{out}/")
                job = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
                assert job.returncode == 0, job.stderr[-3000:]
                assert "20 file(s) classified (0 with an error)" in job.stdout
            else:
                done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, (line, done.stderr[-2000:])
                assert not done.stdout, "the token is a secret: the recipe keeps it off the terminal"
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(nodes):
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=20)
    assert (home / ".ray" / "auth_token").is_file()
    assert before in (None, (home / ".ray" / "auth_token").read_text()), "the recipe replaced an existing token"
    assert sorted(row["path"] for row in _rows(out)) == sorted(str(p) for p in photos.iterdir())


def _alive_nodes(address: str, env: dict) -> int:
    status = subprocess.run([str(RAY_CLI), "status", "--address", address], capture_output=True, text=True, env=env)
    if status.returncode != 0:
        return 0
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto's), reached through pyarrow with the standard AWS
    variables, as a user's bucket is; the README's bucket is made on it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (nox -s bulk installs it)")
    import pyarrow.fs

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    try:
        filesystem = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        filesystem.create_dir("bucket")
        yield filesystem
    finally:
        server.stop()


def test_the_readmes_s3_example_reads_and_writes_a_bucket_resumes_and_retries(s3_server, shared_data, capsys):
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("dogcat batch s3://"))
    assert command == "dogcat batch s3://bucket/photos/ --out s3://bucket/verdicts/"
    photos = _real_photos(shared_data, 3)
    for photo in photos:
        with s3_server.open_output_stream(f"bucket/photos/{photo.name}") as stream:
            stream.write(photo.read_bytes())
    with s3_server.open_output_stream("bucket/photos/later/upload.jpg") as stream:
        stream.write(b"")  # an upload not finished yet
    expected = _predict_json([str(p) for p in photos], SHIPPED_MODEL, "onnx", capsys)
    args = [*command.split()[2:], "--model", str(SHIPPED_MODEL)]
    # One local Ray for the three runs (a start is 20 s); started after the AWS variables, so its workers have them.
    ray.init(address="local", num_cpus=2, logging_level="ERROR", log_to_driver=False)
    try:
        assert main(["batch", *args]) == 1  # the empty upload is an error row
        assert "7 file(s) classified (1 with an error)" in capsys.readouterr().out
        assert main(["batch", *args]) == 0
        assert "all 7 file(s) are already in s3://bucket/verdicts/" in capsys.readouterr().err
        with s3_server.open_output_stream("bucket/photos/later/upload.jpg") as stream:
            stream.write(photos[0].read_bytes())  # the upload is complete now
        assert main(["batch", *args, "--retry-errors"]) == 0
        assert "1 file(s) classified (0 with an error), 1 of them retried" in capsys.readouterr().out
    finally:
        ray.shutdown()
    import pyarrow.dataset as ds

    rows = ds.dataset("bucket/verdicts", format="parquet", filesystem=s3_server).to_table().to_pylist()
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == len(by_path) == 7, "every file once, the retried one included"
    assert by_path["s3://bucket/photos/later/upload.jpg"]["label"] == "cat"
    for photo in photos:
        row, cli = by_path[f"s3://bucket/photos/{photo.name}"], expected[str(photo)]
        assert (row["verdict"], row["label"], row["error"]) == (cli["verdict"], cli["label"], None), photo.name
        assert abs(row["p_dog"] - cli["p_dog"]) <= 1e-6, photo.name
        assert row["looks_like"] == cli["looks_like"], photo.name


class _Outage:
    """A TCP relay to `port` that can be cut (listener and every open connection closed: the endpoint is gone) and
    brought back on the same port, so a job sees its storage die mid-way and come back with its data."""

    def __init__(self, port: int):
        import threading

        self.target, self.port, self.threading = port, _free_port(), threading
        self.open: list[socket.socket] = []
        self.relayed = 0  # bytes from the server
        self.start()

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        self.listener.close()
        for connection in list(self.open):
            with __import__("contextlib").suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                self.threading.Thread(target=self._pump, args=(a, b, a is server), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                self.relayed += len(data) if count else 0
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with __import__("contextlib").suppress(OSError):
                    end.close()


def test_a_storage_endpoint_lost_mid_job_stops_it_in_one_line_and_a_rerun_completes(
        s3_server, shared_data, tmp_path, monkeypatch):
    """The endpoint killed mid-job: `dogcat batch` waited silently (9.5 minutes observed) in reads and Parquet writes."""
    import threading

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    outage = _Outage(int(endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{outage.port}")
    photos = _real_photos(shared_data, 10)
    names = [f"bucket/lost/{copy:02d}-{photo.name}" for copy in range(15) for photo in photos]  # 300 files
    for name, photo in zip(names, photos * 15, strict=False):
        with s3_server.open_output_stream(name) as stream:
            stream.write(photo.read_bytes())
    out = tmp_path / "out"

    third = sum(photo.stat().st_size for photo in photos) * 15 // 3

    def cut_a_third_of_the_way() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and outage.relayed < third:
            time.sleep(0.01)
        outage.cut()

    # The job in a process of its own, as a user runs it, bounded by _batch's timeout: run inside this
    # process (beside the S3 server's and the relay's threads, after the session's other Ray jobs) it once
    # made no progress for 10 minutes in a clean-clone CI run, where alone it stops in under 30 s.
    args = ["s3://bucket/lost/", "--out", str(out), "--model", str(SHIPPED_MODEL)]
    try:
        watcher = threading.Thread(target=cut_a_third_of_the_way, daemon=True)
        watcher.start()
        started = time.monotonic()
        job = _batch(*args, timeout=240)
        took = time.monotonic() - started
        from dogcat.batch import JobStopped

        assert job.returncode == JobStopped.exit_code, job.stderr[-3000:]
        assert took < 180
        errors = [line for line in job.stderr.splitlines() if line.startswith("dogcat: error:")]
        assert len(errors) == 1, job.stderr[-3000:]
        assert "cannot reach the storage of s3://bucket" in errors[0]
        assert "Traceback" not in job.stderr
        done = len(_rows(out)) if list(out.glob("*.parquet")) else 0  # blocks are written as they fill
        assert done < len(names)
        outage.start()  # the endpoint is back, with its data
        again = _batch(*args, timeout=240)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"{len(names) - done} file(s) classified (0 with an error), {done} already in" in again.stdout
    finally:
        outage.cut()
    rows = _rows(out)
    assert sorted(row["path"] for row in rows) == sorted(f"s3://{name}" for name in names), "every file once"
    assert not any(row["error"] for row in rows)
