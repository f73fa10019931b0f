"""The package's modules import each other without a circle (one tied inference, model, verdict and explain together): a walk of every import in dogcat/."""

from __future__ import annotations

import dis

from tests.helpers import REPO, code_objects

PACKAGE = REPO / "dogcat"


def _imports(path) -> set[str]:
    """The dogcat modules a file imports, at module level or inside functions (both can close a circle)."""
    found = set()
    for code in code_objects(path):
        module = None
        for instruction in dis.get_instructions(code):
            if instruction.opname == "IMPORT_NAME":
                module = instruction.argval
                found.add(module)
            elif instruction.opname == "IMPORT_FROM" and module:  # `from dogcat import x`: the module dogcat.x
                found.add(f"{module}.{instruction.argval}")
    return {name for name in found if name.startswith("dogcat")}


def import_graph() -> dict[str, set[str]]:
    modules = {f"dogcat.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the modules along it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_of_dogcat_imports_itself_through_others():
    graph = import_graph()
    assert {"dogcat.detector", "dogcat.verdict", "dogcat.inference"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_walk_finds_a_circle_where_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_detector_and_the_verdict_need_no_keras():
    """detector.py is NumPy only and verdict.py sits below inference: neither reaches Keras or a runtime."""
    graph = import_graph()
    for module in ("dogcat.detector", "dogcat.verdict"):
        assert graph[module] <= {"dogcat.artifacts", "dogcat.config", "dogcat.imagenet_groups", "dogcat.model_folder",
                                 "dogcat.printable", "dogcat.verdict"}, graph[module]
    assert graph["dogcat.imagenet_groups"] <= {"dogcat.artifacts"}
    assert graph["dogcat.model_folder"] <= {"dogcat.artifacts", "dogcat.config"}
