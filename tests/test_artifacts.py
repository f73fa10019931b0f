import os
import pickle

import pytest

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
