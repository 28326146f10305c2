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
            # ``from package import module`` imports the module, not the package's __init__
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                path = ROOT.joinpath(*sub.split("."))
                yield sub if path.with_suffix(".py").is_file() or path.is_dir() else node.module


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


#: The package's layers, lowest first: a module imports only from its own layer and those
#: before it (``search`` and ``export`` share a layer and never import each other).
LAYERS = [("utils",), ("data",), ("model",), ("training",), ("inference",), ("search", "export"),
          ("hub",), ("cli",)]


def _layer(module):
    """The layer index of ``speechbrain_mrl.<package>...`` (None: the package's own ``__init__``)."""
    parts = module.split(".")
    if parts[0] != "speechbrain_mrl" or len(parts) == 1:
        return None
    for rank, packages in enumerate(LAYERS):
        if parts[1] in packages:
            return rank
    raise AssertionError(f"{module}: in no layer of {LAYERS}")


def _package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def test_every_module_lives_in_a_layer_package():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py")
    assert top == ["__init__.py"], f"modules outside the layer packages: {top}"
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == {name for layer in LAYERS for name in layer}, packages


def test_no_package_imports_a_higher_layer():
    upward = []
    for module, path in _package_modules():
        own = _layer(module)
        if own is None:
            continue
        for dep in _imports(path):
            rank = _layer(dep) if dep.startswith("speechbrain_mrl.") else None
            if rank is not None and (rank > own or (rank == own and dep.split(".")[1]
                                                    != module.split(".")[1])):
                upward.append(f"{module} imports {dep}")
    assert not upward, "\n".join(upward)


def test_argparse_only_under_cli():
    offenders = [module for module, path in _package_modules()
                 if "argparse" in set(_imports(path)) and not module.startswith("speechbrain_mrl.cli")]
    assert not offenders, offenders


def test_design_card_top_level():
    """The top level the design card names; hub_upload/ holds what a hub repository receives."""
    for name in ("recipes", "speechbrain_mrl", "hparams", "hub_upload", "tests", "setup.cfg",
                 "README.md"):
        assert (ROOT / name).exists(), name
    assert {"hyperparams.yaml", "custom_interface.py", "model_card.md", "upload.py"} <= {
        p.name for p in (ROOT / "hub_upload").iterdir()}


def test_every_option_of_the_recipe_scripts_has_help():
    """argparse options of the recipes' scripts (run_demo.py) say what they do."""
    for path in sorted(RECIPES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                assert any(k.arg == "help" for k in node.keywords), f"{path.name}:{node.lineno}"


def test_every_option_of_the_benchmark_scripts_has_help_and_a_snake_case_name():
    """A flag means the same thing everywhere: benchmarks/*.py spell theirs ``--snake_case``
    (as the package and the recipes do), and every option says what it does."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert scripts
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                where = f"{path.name}:{node.lineno}"
                assert any(k.arg == "help" for k in node.keywords), where
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        assert "-" not in arg.value[2:], f"{where}: {arg.value}"


def test_api_page_is_generated_from_the_package():
    """docs/api.md is what docs/make_api.py writes from the package, never kept by hand."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_wheel_ships_the_model_and_the_hub_templates(tmp_path):
    """A plain (non-editable) install has the shipped model and hub_upload/'s templates."""
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    model = "speechbrain_mrl/model/pretrained/demo-sc/"
    for name in ("hyperparams.yaml", "embedding_model.ckpt", "mrl_head.ckpt", "calibration.json",
                 "model_info.json", "README.md"):
        assert model + name in names, name
    for name in ("hyperparams.yaml", "custom_interface.py", "model_card.md", "__init__.py"):
        assert "speechbrain_mrl/templates/" + name in names, name
    assert not any(n.startswith(("tests/", "recipes/", "hub_upload/")) for n in names)
