"""The Hugging Face Space that `dogcat space build` writes (dogcat.space): what the folder and its card
hold, that a rebuild never deletes what it did not write, and the built Space served by its own app.py
on 127.0.0.1 to gradio_client.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
yaml = pytest.importorskip("yaml")  # a Gradio dependency; parses the Space's front matter

from dogcat.artifacts import CLASS_NAMES_FILENAME, MODEL_FILENAME  # noqa: E402
from dogcat.detector import DESCRIPTION  # noqa: E402
from dogcat.space import (  # noqa: E402
    MARKER_FILENAME,
    NOT_VENDORED,
    ONNX_REQUIREMENTS,
    REQUIREMENTS,
    SpaceError,
    build_space,
)
from tests.helpers import (  # noqa: E402
    REAL_CAT,
    REAL_DOG,
    REPO,
    SERVER_START_TIMEOUT,
    assert_one_clean_line,
    classify_by_api,
    gradio_server_env,
    label_probabilities,
)
from tests.servers import free_port, serving  # noqa: E402

APP_FILE = REPO / "demos" / "gradio_app.py"  # the Space's app.py is this file
# The Space pins tensorflow-cpu to the installed version, so it is built (and served) only where
# TensorFlow is installed; the app itself runs on any Keras backend.
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                      reason="the Space pins tensorflow-cpu: TensorFlow is not installed")

# --- a rebuild never deletes what it did not write ---------------------------------------------------

HUB_README = """---
title: My Space
emoji: 🚀
colorFrom: blue
colorTo: red
sdk: gradio
sdk_version: 5.0.0
app_file: app.py
pinned: false
---

Check out the configuration reference at https://huggingface.co/docs/hub/spaces-config-reference
"""


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@needs_tensorflow
def test_a_folder_of_user_files_is_refused_and_left_untouched(tmp_path, tiny_model_dir):
    out = tmp_path / "mine"
    (out / "models").mkdir(parents=True)
    (out / "README.md").write_text("# my project\n")
    (out / "models" / "my_model.bin").write_bytes(b"\x00weights")
    before = _snapshot(out)
    with pytest.raises(SpaceError) as error:
        build_space(out, tiny_model_dir)
    message = str(error.value)
    assert "did not write" in message
    assert "\n" not in message
    assert f"Received: out_dir={str(out)!r}" in message
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "models"]  # no staging or marker left


@needs_tensorflow
def test_a_user_file_where_the_build_would_write_is_refused(tmp_path, tiny_model_dir):
    out = build_space(tmp_path / "space", tiny_model_dir)
    marker = json.loads((out / MARKER_FILENAME).read_text())
    marker["files"].remove("requirements.txt")  # as if the user, not the build, had written it
    (out / MARKER_FILENAME).write_text(json.dumps(marker))
    (out / "requirements.txt").write_text("my pins\n")
    with pytest.raises(SpaceError, match=r"did not write; move it first\. Received: path=.*requirements\.txt'$"):
        build_space(out, tiny_model_dir)
    assert (out / "requirements.txt").read_text() == "my pins\n"
    assert (out / "app.py").is_file()  # the refused rebuild deleted nothing


@needs_tensorflow
def test_a_rebuild_replaces_its_own_files_and_keeps_the_users(tmp_path, tiny_model_dir):
    out = build_space(tmp_path / "space", tiny_model_dir)
    written = json.loads((out / MARKER_FILENAME).read_text())["files"]
    assert "app.py" in written
    assert "models/dog_cat_classifier.keras" in written
    assert ".gitattributes" not in written
    (out / "models" / "my_model.bin").write_bytes(b"\x00weights")
    (out / "notes.md").write_text("mine")
    (out / "app.py").write_text("# edited, and so replaced by the rebuild")
    build_space(out, tiny_model_dir)
    assert (out / "models" / "my_model.bin").read_bytes() == b"\x00weights"
    assert (out / "notes.md").read_text() == "mine"
    assert "edited" not in (out / "app.py").read_text()
    assert json.loads((out / MARKER_FILENAME).read_text())["files"] == written


@needs_tensorflow
def test_a_fresh_clone_of_a_space_is_built_into(tmp_path, tiny_model_dir):
    out = tmp_path / "clone"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (out / "README.md").write_text(HUB_README, encoding="utf-8")
    build_space(out, tiny_model_dir)
    readme = (out / "README.md").read_text(encoding="utf-8")  # the Hub's stub, replaced by the build's card
    assert 'title: "dogcat"' in readme
    assert "configuration reference" not in readme
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (out / ".gitattributes").read_text().startswith("*.bin filter=lfs")


@needs_tensorflow
def test_an_edited_hub_readme_counts_as_a_user_file(tmp_path, tiny_model_dir):
    out = tmp_path / "clone"
    out.mkdir()
    (out / "README.md").write_text(HUB_README + "\nMy notes.\n", encoding="utf-8")
    with pytest.raises(SpaceError, match=r"holding 'README\.md'"):
        build_space(out, tiny_model_dir)
    assert (out / "README.md").read_text(encoding="utf-8").endswith("My notes.\n")


@needs_tensorflow
@pytest.mark.parametrize("listed", ["../outside.txt", "/etc/passwd", ".git/HEAD", ".", "app\0.py"])
def test_a_marker_naming_files_outside_the_build_is_refused(tmp_path, tiny_model_dir, listed):
    out = build_space(tmp_path / "space", tiny_model_dir)
    (tmp_path / "outside.txt").write_text("keep")
    marker = json.loads((out / MARKER_FILENAME).read_text())
    (out / MARKER_FILENAME).write_text(json.dumps({"files": [*marker["files"], listed]}))
    with pytest.raises(SpaceError, match="marker is damaged"):
        build_space(out, tiny_model_dir)
    assert (tmp_path / "outside.txt").read_text() == "keep"


def _list_in_marker(out, *names, dropping=""):
    """Edit the build marker as a cloned Space could carry it: `names` added, entries under `dropping` gone."""
    marker = json.loads((out / MARKER_FILENAME).read_text())
    kept = [name for name in marker["files"] if not (dropping and name.startswith(dropping))]
    (out / MARKER_FILENAME).write_text(json.dumps({**marker, "files": [*kept, *names]}))


@needs_tensorflow
def test_a_marker_entry_through_a_symlinked_folder_deletes_nothing_outside(tmp_path, tiny_model_dir, capsys):
    from dogcat.cli import main

    out = build_space(tmp_path / "space", tiny_model_dir)
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "id_rsa").write_text("secret")
    (out / "cfg").symlink_to("../victim", target_is_directory=True)  # git clones carry symlinks
    _list_in_marker(out, "cfg/id_rsa")
    before = _snapshot(out)
    assert main(["space", "build", str(out), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogcat: error: ")
    assert err.count("\n") == 1
    assert f"symlink where the build would delete or write a file; dogcat never follows one, so remove it first. Received: path={str(out / 'cfg')!r}" in err
    assert (tmp_path / "victim" / "id_rsa").read_text() == "secret"
    assert _snapshot(out) == before  # refused before anything was deleted or written


@needs_tensorflow
@pytest.mark.parametrize(("target", "marker_lists_it"), [("../outside", True), ("../outside", False), ("mine", True)],
                         ids=["outside-listed", "outside-unlisted", "inside-listed"])
def test_a_symlinked_folder_the_build_writes_into_is_refused(tmp_path, tiny_model_dir, target, marker_lists_it):
    """`models` a symlink to a folder outside the Space or to the user's folder inside it: neither is touched.

    Unlisted (the marker names no models/ file) the symlink is met only when writing; listed, when deleting.
    """
    out = build_space(tmp_path / "space", tiny_model_dir)
    folder = (out / "models").parent / target
    folder.mkdir()
    (folder / "dog_cat_classifier.keras").write_bytes(b"\x00the user's own")
    (folder / "class_names.pkl").write_bytes(b"\x00also theirs")
    shutil.rmtree(out / "models")
    (out / "models").symlink_to(target, target_is_directory=True)
    if not marker_lists_it:
        _list_in_marker(out, dropping="models/")
    before = _snapshot(folder.resolve())
    with pytest.raises(SpaceError, match=rf"symlink where .* Received: path={re.escape(repr(str(out / 'models')))}$") as error:
        build_space(out, tiny_model_dir)
    assert "\n" not in str(error.value)
    assert _snapshot(folder.resolve()) == before
    assert (out / "models").is_symlink()


@needs_tensorflow
def test_a_symlinked_gitattributes_is_not_read_into_the_space(tmp_path, tiny_model_dir):
    """The build appends its LFS rules to .gitattributes: through a symlink it would copy the target into the Space."""
    out = tmp_path / "clone"
    out.mkdir()
    (tmp_path / "id_rsa").write_text("secret\n")
    (out / ".gitattributes").symlink_to(tmp_path / "id_rsa")
    with pytest.raises(SpaceError, match=r"symlink where .* Received: path=.*\.gitattributes'$"):
        build_space(out, tiny_model_dir)
    assert (tmp_path / "id_rsa").read_text() == "secret\n"
    assert (out / ".gitattributes").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [".gitattributes"]


@needs_tensorflow
def test_a_file_where_the_build_needs_a_folder_is_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "afile.txt").write_text("mine")
    with pytest.raises(SpaceError, match=r"inside a file \(.*afile\.txt'\)\. Received: out_dir=.*afile\.txt/sub'$"):
        build_space(tmp_path / "afile.txt" / "sub", tiny_model_dir)
    assert (tmp_path / "afile.txt").read_text() == "mine"
    out = build_space(tmp_path / "space", tiny_model_dir)
    shutil.rmtree(out / "models")
    (out / "models").write_text("not a folder")
    with pytest.raises(SpaceError, match=r"a file where the build needs a folder; move it first\. Received: path=.*models'$"):
        build_space(out, tiny_model_dir)
    assert (out / "models").read_text() == "not a folder"


# --- what the built folder holds, and its card ---------------------------------------------------


@pytest.fixture
def measured_model(tmp_path, tiny_model_dir):
    """The tiny model with a test_metrics.json of made-up numbers: the card must show these."""
    import json

    folder = tmp_path / "run"
    folder.mkdir()
    for name in (MODEL_FILENAME, CLASS_NAMES_FILENAME):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    metrics = {"count": 16, "accuracy": 0.8125, "log_loss": 0.4321, "class_names": ["cat", "dog"],
               "per_class": {"cat": {"precision": 0.75, "recall": 0.875}, "dog": {"precision": 0.857, "recall": 0.75}},
               "confusion_matrix": [[7, 1], [2, 6]]}
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    return folder


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@needs_tensorflow
def test_space_folder_has_everything_a_gradio_space_needs(tmp_path, measured_model):
    import importlib.metadata

    out = build_space(tmp_path / "space", measured_model)
    assert (out / "app.py").read_bytes() == APP_FILE.read_bytes()  # one app, not two
    readme = (out / "README.md").read_text(encoding="utf-8")
    front = _front_matter(readme)
    assert front["sdk"] == "gradio"
    assert front["sdk_version"] == gr.__version__
    assert front["app_file"] == "app.py"
    assert front["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    for key in ("title", "emoji", "colorFrom", "colorTo", "license", "short_description"):
        assert front[key], key
    assert len(front["short_description"]) <= 60  # the Hub's limit
    # The card's numbers come from the model's test_metrics.json.
    assert "**0.8125** (13 / 16)" in readme
    assert "0.4321" in readme
    assert "+/-19.1 percentage points" in readme  # 1.96 * sqrt(0.8125 * 0.1875 / 16)
    assert "cat or dog for **any** image" in readme
    assert ".onnx" not in readme  # this model has no export: the Space serves the .keras file

    pins = dict(line.split("==") for line in (out / "requirements.txt").read_text().split())
    assert list(pins) == list(REQUIREMENTS)
    assert "tensorflow" not in pins  # CPU-only wheel
    for name, pinned in pins.items():
        assert pinned == importlib.metadata.version(name), name

    source = REPO / "dogcat"
    vendored = {p.relative_to(out / "dogcat") for p in (out / "dogcat").rglob("*") if p.is_file()}
    # the modules and their data (the ImageNet groups table the detector reads)
    assert vendored == {p.relative_to(source) for pattern in ("*.py", "*.tsv") for p in source.glob(pattern)}
    assert not any(part in NOT_VENDORED for p in vendored for part in p.parts)
    assert (out / "models" / MODEL_FILENAME).read_bytes() == (measured_model / MODEL_FILENAME).read_bytes()
    assert (out / "models" / CLASS_NAMES_FILENAME).is_file()
    assert {p.name for p in (out / "examples").iterdir()} == {p.name for p in (APP_FILE.parent / "examples").iterdir()}
    rules = (out / ".gitattributes").read_text()
    assert "*.keras filter=lfs" in rules
    assert "*.npz filter=lfs" in rules  # the detector and the ImageNet head: the Hub refuses binaries outside LFS


def test_card_recipe_is_read_from_the_models_config(space):
    from dogcat.config import load_config

    config = load_config(REPO / "models" / "config.toml")
    readme = (space / "README.md").read_text(encoding="utf-8")
    assert f"up to {config.train.epochs} epochs in all; batch {config.train.batch_size}" in readme
    assert f"Input {config.data.image_size} px" in readme


def test_space_of_an_exported_model_runs_without_keras_or_tensorflow(space):
    """The shipped model has a matching ONNX twin, so its Space installs and imports no TensorFlow."""
    pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().split())
    assert list(pins) == list(ONNX_REQUIREMENTS)
    assert (space / "models" / "dog_cat_classifier.onnx").is_file()
    assert (space / "models" / "dog_cat_detector.npz").is_file()
    readme = (space / "README.md").read_text(encoding="utf-8")  # the card names what serves, and the detector
    assert "- `models/dog_cat_classifier.onnx` (" in readme
    assert "what the app serves, with ONNX Runtime" in readme
    assert "- `models/dog_cat_detector.npz`: the \"neither\" detector" in readme
    assert DESCRIPTION in readme  # the one description of the detector, as the apps give it
    assert (space / "models" / "imagenet_head.npz").is_file()  # what the detector reads
    # Import the app with keras and tensorflow made unimportable: it must build and answer.
    probe = (
        "import sys; sys.modules.update(keras=None, tensorflow=None); import runpy; "
        "app = runpy.run_path('app.py', run_name='space_probe'); "
        "print(app['CLASSIFIER'].runtime, app['CLASSIFIER'].verdict_warning, "
        "[app['predict'](f'examples/{name}')[0] for name in ('cat-chelsea.jpg', 'astronaut.jpg')])"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=space, env=gradio_server_env(0),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # The detector reads the ONNX twin's features: verdicts without Keras.
    runtime, warning, verdicts = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (runtime, warning) == ("onnx", "None")
    assert re.fullmatch(r"\['Cat: looks like an? [^']+ cat \(\d+%\)', 'Neither a cat nor a dog: looks like an? [^']+ \(\d+%\)'\]",
                        verdicts), verdicts


@needs_tensorflow
def test_card_says_when_nothing_was_measured(tmp_path, tiny_model_dir):
    readme = (build_space(tmp_path / "space", tiny_model_dir) / "README.md").read_text(encoding="utf-8")
    assert "Not measured: no `test_metrics.json`" in readme
    assert "accuracy (" not in readme


@needs_tensorflow
def test_rebuilding_into_a_clone_of_the_space_keeps_its_other_files(tmp_path, tiny_model_dir):
    import json

    out = tmp_path / "clone"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".gitattributes").write_text("*.pkl filter=lfs diff=lfs merge=lfs -text\n")
    build_space(out, tiny_model_dir)
    (out / "notes.txt").write_text("mine")  # the user's, added after the first build
    marker = json.loads((out / ".dogcat-space.json").read_text())
    (out / "dogcat" / "stale.py").write_text("# from an older build")  # as if an older build wrote it
    (out / ".dogcat-space.json").write_text(json.dumps({"files": [*marker["files"], "dogcat/stale.py"]}))
    build_space(out, tiny_model_dir)
    build_space(out, tiny_model_dir)  # twice: idempotent
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "dogcat" / "stale.py").exists()
    rules = (out / ".gitattributes").read_text().splitlines()
    assert rules.count("*.pkl filter=lfs diff=lfs merge=lfs -text") == 1
    assert "*.keras filter=lfs diff=lfs merge=lfs -text" in rules
    assert not [p for p in out.iterdir() if p.name.startswith(".dogcat-space-")]  # no staging left


def test_refuses_to_build_over_the_source_tree(tiny_model_dir):
    with pytest.raises(SpaceError, match="source tree"):
        build_space(REPO, tiny_model_dir)


@needs_tensorflow
def test_cli_space_build_and_a_missing_model(tmp_path, tiny_model_dir, capsys):
    from dogcat.cli import main

    assert main(["space", "build", str(tmp_path / "s"), "--model", str(tiny_model_dir)]) == 0
    assert (tmp_path / "s" / "app.py").is_file()
    assert "hf upload" in capsys.readouterr().out
    assert main(["space", "build", str(tmp_path / "t"), "--model", str(tmp_path / "nope.keras")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogcat: error: ")
    assert len(err.strip().splitlines()) == 1


# --- the built Space, served: a real server and a real client -------------------------------------


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    """A Space built with the shipped model, as a user would push it."""
    return build_space(tmp_path_factory.mktemp("space") / "out")


@pytest.fixture(scope="module")
def space_client(space, tmp_path_factory):
    """`python app.py` in the Space folder, serving on 127.0.0.1:<free port>; always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("space_log") / "server.log"
    with serving([sys.executable, "app.py"], f"{url}/gradio_api/info", log, SERVER_START_TIMEOUT,
                 cwd=space, env=gradio_server_env(port)):
        yield gradio_client.Client(url, verbose=False)


@pytest.mark.slow
@needs_tensorflow
def test_the_cards_python_example_runs_against_the_served_space(space, space_client):
    """The README's snippet, as it is, with only the Space's address and a photo filled in."""
    readme = (space / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Use it from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert '"USER/SPACE"' in snippet
    assert 'handle_file("photo.jpg")' in snippet
    rocket = space / "examples" / "rocket.jpg"
    code = snippet.replace('"USER/SPACE"', repr(space_client.src)).replace('"photo.jpg"', repr(str(rocket)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.splitlines()[-2:]  # after gradio_client's own "Loaded as API: ..."
    verdict, seen = printed[0].split(" ", 1)
    looks_like, probability = seen.rsplit(" ", 1)
    assert verdict == "neither"
    assert looks_like  # ImageNet's top class, by its everyday name: "sports car"
    assert 0 < float(probability) < 1
    assert printed[1].startswith("Neither a cat nor a dog: looks like ")


@pytest.mark.slow
@needs_tensorflow
def test_space_imports_its_vendored_package(space):
    probe = subprocess.run([sys.executable, "-c", "import dogcat; print(dogcat.__file__)"], cwd=space,
                           env=gradio_server_env(0), capture_output=True, text=True, check=True, timeout=60)
    assert Path(probe.stdout.strip()) == space / "dogcat" / "__init__.py"


@pytest.mark.slow
@needs_tensorflow
def test_space_classifies_the_example_cat_and_refuses_a_corrupt_file(space, space_client, tmp_path):
    from PIL import Image

    cat = space / "examples" / "cat-chelsea.jpg"
    verdict, label, probabilities, looked = classify_by_api(space_client, cat, explain=True)
    assert (verdict.split(":")[0], label) == ("Cat", "cat")
    assert verdict.startswith("Cat: looks like ")
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with Image.open(looked) as shown, Image.open(cat) as photo:
        assert shown.size == photo.size  # the ONNX-only Space draws the heatmap too
    verdict, label, _, looked = classify_by_api(space_client, space / "examples" / "rocket.jpg")
    assert verdict.startswith("Neither a cat nor a dog: looks like ")
    assert looked is None

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        classify_by_api(space_client, corrupt)
    message = str(caught.value)
    assert message.startswith("Cannot read corrupt.jpg: ")
    assert_one_clean_line(message, tmp_path)


@pytest.mark.slow
@pytest.mark.shared_data
@needs_tensorflow
def test_space_classifies_real_photos_one_by_one_and_twenty_at_once(space_client, shared_data):
    photos = {"cat": shared_data / REAL_CAT, "dog": shared_data / REAL_DOG}
    answers = {}
    for truth, path in photos.items():
        verdict, label, probabilities, _ = classify_by_api(space_client, path)
        assert verdict.split(": looks like ")[0] == truth.capitalize()  # and, for a breed, what it looks like
        assert label == truth
        assert set(probabilities) == {"cat", "dog"}
        assert probabilities[truth] > 0.9
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        answers[truth] = probabilities

    # 20 requests in flight together, cats and dogs interleaved: each must get its own answer.
    truths = ["cat", "dog"] * 10
    jobs = [space_client.submit(gradio_client.handle_file(str(photos[t])), api_name="/predict") for t in truths]
    results = [job.result(timeout=120) for job in jobs]  # all were submitted before the first is awaited
    assert [r[1]["label"] for r in results] == truths
    for truth, result in zip(truths, results, strict=True):
        for name, p in label_probabilities(result[1]).items():
            assert p == pytest.approx(answers[truth][name], abs=1e-5)
