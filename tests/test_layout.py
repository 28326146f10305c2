"""The project's structure rules: thin recipe scripts over the package, no import cycles."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PACKAGE = ROOT / "speechbrain_mrl"


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_recipe_scripts_import_only_the_package():
    """No sys.path edits in recipes/, and no recipe file imports another."""
    scripts = sorted(RECIPES.rglob("*.py"))
    names = {p.stem for p in scripts}
    assert scripts
    for path in scripts:
        assert "sys.path" not in path.read_text(), path
        assert not names & set(_imports(path)), (path, names & set(_imports(path)))


def test_package_has_no_import_cycles_and_never_imports_recipes():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set(_imports(path))
        assert not {d.split(".")[0] for d in deps} & {"train", "run_demo", "recipes"}, path
        graph[name] = {d for d in deps if d in modules and d != name}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state and node != "speechbrain_mrl":  # the package re-exports its modules
            visit(node, [])
