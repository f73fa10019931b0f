import os
import pickle
import shutil

import pytest

from dogcat import artifacts, model
from dogcat.artifacts import (
    CLASS_NAMES,
    ArtifactError,
    load_class_names,
    save_class_names,
    write_text_atomic,
)


def test_class_names_round_trip(tmp_path):
    save_class_names(tmp_path / "class_names.pkl")
    assert load_class_names(tmp_path / "class_names.pkl") == {0: "cat", 1: "dog"} == CLASS_NAMES


def test_plain_pickle_of_the_dict_is_accepted(tmp_path):
    # What the seed project wrote with pickle.dump: still loads.
    (tmp_path / "class_names.pkl").write_bytes(pickle.dumps({0: "cat", 1: "dog"}, protocol=2))
    assert load_class_names(tmp_path / "class_names.pkl") == {0: "cat", 1: "dog"}


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _Calls:
    """Pickles as a call of any global, e.g. builtins.eval: the payload an allow-list must stop."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def test_malicious_class_names_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "class_names.pkl").write_bytes(pickle.dumps({0: _RunsCode(str(marker)), 1: "dog"}))
    with pytest.raises(ArtifactError, match=r"refusing to load (posix|os)\.mkdir"):
        load_class_names(tmp_path / "class_names.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["eval", "exec", "getattr", "__import__"])
def test_builtins_in_a_class_names_pickle_are_refused_without_running_them(tmp_path, name):
    marker = tmp_path / "pwned"
    write_marker = f"open({str(marker)!r}, 'w').close()"
    function, args = {
        "eval": (eval, (write_marker,)), "exec": (exec, (write_marker,)),
        "getattr": (getattr, ("cat", "upper")), "__import__": (__import__, ("os",)),
    }[name]
    (tmp_path / "class_names.pkl").write_bytes(pickle.dumps({0: _Calls(function, *args), 1: "dog"}))
    with pytest.raises(ArtifactError, match=rf"refusing to load builtins\.{name}:"):
        load_class_names(tmp_path / "class_names.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("payload", [["cat", "dog"], {0: "cat"}, {"0": "cat", "1": "dog"}, {0: "cat", 2: "dog"}, {0: 1, 1: 2}])
def test_class_names_of_the_wrong_shape_are_refused(tmp_path, payload):
    (tmp_path / "class_names.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(ArtifactError, match="Received"):
        load_class_names(tmp_path / "class_names.pkl")


def test_garbage_and_missing_class_names_are_clear_errors(tmp_path):
    (tmp_path / "class_names.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match="not a valid pickle"):
        load_class_names(tmp_path / "class_names.pkl")
    with pytest.raises(ArtifactError, match="not found"):
        load_class_names(tmp_path / "missing.pkl")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from dogcat.artifacts import save_atomic

    target = tmp_path / "model.keras"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_atomic(target, crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary left behind
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


# --- hostile model folders: every bound is checked before the expensive or recursive step ---------


def _nested_pickle(depth: int) -> bytes:
    """{0: [[...["cat"]...]], 1: "dog"} written opcode by opcode (pickle.dumps itself would recurse)."""
    return (b"\x80\x02}K\x00" + b"]" * depth + b"X\x03\x00\x00\x00cat" + b"a" * depth
            + b"sK\x01X\x03\x00\x00\x00dogs.")


def test_a_deeply_nested_pickle_is_an_artifact_error_not_a_recursion_error(tmp_path):
    assert pickle.loads(_nested_pickle(3)) == {0: [[["cat"]]], 1: "dog"}
    path = tmp_path / "class_names.pkl"
    path.write_bytes(_nested_pickle(30_000))
    assert len(path.read_bytes()) <= artifacts.MAX_CLASS_NAMES_BYTES
    with pytest.raises(ArtifactError, match=r"nests containers more than 8 deep\. Received: path="):
        load_class_names(path)


def test_a_shallow_nested_pickle_is_refused_by_shape(tmp_path):
    path = tmp_path / "class_names.pkl"
    path.write_bytes(_nested_pickle(3))
    with pytest.raises(ArtifactError, match="unique non-empty str"):
        load_class_names(path)


def test_a_huge_class_names_file_is_refused_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "class_names.pkl"
    path.write_bytes(pickle.dumps({0: "cat", 1: "dog" * 50_000}))

    def never(*args, **kwargs):
        raise AssertionError("unpickled a file over the size limit")

    monkeypatch.setattr(artifacts, "_PlainDataUnpickler", never)
    with pytest.raises(ArtifactError, match=r"too large \(\d+ bytes; at most 65536\)\. Received: path="):
        load_class_names(path)


@pytest.mark.parametrize("names", [{0: "cat", 1: "cat"}, {0: "cat", 1: ""}, {0: " ", 1: "dog"}])
def test_class_names_must_be_unique_non_empty_strings(tmp_path, names):
    path = tmp_path / "class_names.pkl"
    path.write_bytes(pickle.dumps(names))
    with pytest.raises(ArtifactError, match="unique non-empty str"):
        load_class_names(path)
    with pytest.raises(ArtifactError, match="unique non-empty str"):
        save_class_names(tmp_path / "out.pkl", names)


def test_a_model_that_would_inflate_past_the_limit_is_refused_before_keras_reads_it(tmp_path, tiny_model_dir, monkeypatch):
    import keras

    path = tmp_path / "dog_cat_classifier.keras"
    shutil.copy(tiny_model_dir / "dog_cat_classifier.keras", path)
    assert model.load_model(path) is not None  # under the real limit it loads

    def never(*args, **kwargs):
        raise AssertionError("Keras was asked to load an over-limit file")

    monkeypatch.setattr(keras.saving, "load_model", never)
    monkeypatch.setattr(model, "MAX_MODEL_UNCOMPRESSED_BYTES", 1 << 20)  # 1 MiB: the tiny model inflates to more
    with pytest.raises(ArtifactError) as error:
        model.load_model(path)
    message = str(error.value)
    assert "inflate to" in message
    assert "over the 1 MiB limit" in message
    assert message.endswith(f"Received: path={str(path)!r}")


def test_a_real_zip_bomb_is_refused_from_its_central_directory(tmp_path, monkeypatch):
    import zipfile

    import keras

    path = tmp_path / "bomb.keras"
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("model.weights.h5", "w", force_zip64=True) as member,
    ):
        block = bytes(1 << 24)
        for _ in range(65):  # 1040 MiB of zeros, about 1 MB compressed
            member.write(block)
    assert path.stat().st_size < 5 << 20
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras was asked to load a zip bomb"))
    with pytest.raises(ArtifactError, match=r"would inflate to 1040 MiB, over the 1024 MiB limit"):
        model.load_model(path)


def test_a_keras_file_that_is_not_a_zip_is_a_clear_error(tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"not a \.keras zip archive"):
        model.load_model(path)
