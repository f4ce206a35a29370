"""The import graph of ``src/ivcp`` (every import, lazy ones in functions included; ``TYPE_CHECKING`` blocks left out).

    python scripts/import_graph.py [SRC_DIR]    # prints the import circles and the upward imports; exit 1 if any

A circle is a strongly connected component of the file graph: files that import each other, directly or not.
Upward: a file of a lower layer (``model``, ``data``, ``hparams``) importing an upper one (``train``, ``api``,
``webui``, ``integration``, ``inference``, ``cli``...).
"""

import ast
import os
import sys
from collections.abc import Iterator


PACKAGE = "ivcp"
LOWER_LAYERS = ("ivcp.model", "ivcp.data", "ivcp.hparams")
SHARED = ("ivcp.constants", "ivcp.log")  # leaves (they import no ivcp module) every layer may import


def modules(src_dir: str) -> dict[str, str]:
    r"""Module name -> file, for every .py file of the package."""
    found = {}
    for root, _, files in os.walk(os.path.join(src_dir, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, src_dir)[: -len(".py")].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    r"""Every node except those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue

        yield node
        yield from _runtime_nodes(node)


def imports(module: str, path: str, known: dict[str, str]) -> set[str]:
    r"""The package's modules that ``module`` imports (``from . import x`` counts ``x`` when it is a module)."""
    is_package = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)

    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue

        for name in names:
            while name and name not in known:  # `import ivcp.model.loss` names ivcp.model.loss
                name = name.rpartition(".")[0] if name.startswith(PACKAGE) else ""
            if name and name != module:
                found.add(name)

    return found


def graph(src_dir: str) -> dict[str, set[str]]:
    known = modules(src_dir)
    return {module: imports(module, path, known) for module, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    r"""The strongly connected components with more than one module (Tarjan's algorithm), largest first."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            visit(node)

    return sorted(found, key=len, reverse=True)


def _layer(module: str) -> bool:
    return any(module == layer or module.startswith(f"{layer}.") for layer in LOWER_LAYERS)


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    r"""(importer, imported) pairs where a lower-layer module imports a module outside the lower layers."""
    return sorted(
        (module, target)
        for module, targets in edges.items()
        if _layer(module)
        for target in targets
        if not _layer(target) and target not in SHARED
    )


def main() -> int:
    src_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    edges = graph(src_dir)
    found, upward = circles(edges), upward_imports(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports")
    for component in found:
        print(f"circle of {len(component)}: {', '.join(component)}")
    for module, target in upward:
        print(f"upward: {module} -> {target}")
    return 1 if any(len(component) > 2 for component in found) or upward else 0


if __name__ == "__main__":
    sys.exit(main())
