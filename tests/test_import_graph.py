"""The house's structure, held by the suite: `lint-imports` (make test) keeps every import going
down the layers; this keeps the modules free of circles, including those function-level imports
would hide (issue 24). Imports made only for type annotations do not count: they never run."""

from __future__ import annotations

import grimp


def circles(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Pairs of modules that import each other, directly or through others."""
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                found.add(tuple(sorted((module, imported))))
    return sorted(found)


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("multitag", "tasks", "flows", exclude_type_checking_imports=True)
    assert circles(graph) == []


def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path, monkeypatch):
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from circled import high\n    return high\n")
    (package / "high.py").write_text("from circled import low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert circles(grimp.build_graph("circled")) == [("circled.high", "circled.low")]
