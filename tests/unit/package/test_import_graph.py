"""The layers hold: no import circle of more than two files, no import from model/data/hparams up into the rest."""

import importlib.util

from tests.helpers import REPO


SCRIPT = REPO / "scripts" / "import_graph.py"
SRC = str(REPO / "src")


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_circle_longer_than_two_files_and_no_upward_import():
    tool = _import_graph()
    edges = tool.graph(SRC)
    assert edges["ivcp.model.loader"] >= {"ivcp.model.video_processor", "ivcp.model.head_config"}  # lazy ones too
    assert [circle for circle in tool.circles(edges) if len(circle) > 2] == []
    assert tool.upward_imports(edges) == []
    assert not any(target.startswith("ivcp.train") for target in edges["ivcp.inference"])
    assert {module for module, targets in edges.items() if "ivcp.integration" in targets} == {"ivcp"}  # register()


def test_the_tool_finds_a_circle_and_an_upward_import():
    tool = _import_graph()
    edges = {"ivcp.model.a": {"ivcp.train.b"}, "ivcp.train.b": {"ivcp.api.c"}, "ivcp.api.c": {"ivcp.model.a"}}
    assert tool.circles(edges) == [["ivcp.api.c", "ivcp.model.a", "ivcp.train.b"]]
    assert tool.upward_imports(edges) == [("ivcp.model.a", "ivcp.train.b")]
