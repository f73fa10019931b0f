"""`dogcat space build` never deletes what it did not write."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest

pytest.importorskip("gradio")

from dogcat.space import MARKER_FILENAME, SpaceError, build_space

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                reason="the Space pins tensorflow-cpu: TensorFlow is not installed")

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


def test_an_edited_hub_readme_counts_as_a_user_file(tmp_path, tiny_model_dir):
    out = tmp_path / "clone"
    out.mkdir()
    (out / "README.md").write_text(HUB_README + "\nMy notes.\n", encoding="utf-8")
    with pytest.raises(SpaceError, match=r"holding 'README\.md'"):
        build_space(out, tiny_model_dir)
    assert (out / "README.md").read_text(encoding="utf-8").endswith("My notes.\n")


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
