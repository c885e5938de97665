"""The import graph of vae_jax, read from the source (AST), module-level and function-level imports alike:
no import circle, no ``jax._src``, and every import points to the importer's layer or a lower one (the
layer table of :mod:`vae_jax.protocol`, held here as data)."""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vae_jax"

# Lowest first; a module may import from its own layer and the layers above it in this list.
LAYERS = {
    "base": ["errors", "arrays", "compiling", "phases"],
    "maths": [
        "ops",
        "losses",
        "quantize",
        "schedules",
        "objectives",
        "penalties",
        "corruption",
        "evaluate",
        "diagnostics",
        "precision",
        "models",
        "models.*",
    ],
    "data": ["data", "data.*"],
    "protocol": ["protocol"],
    "families": ["tasks", "tasks.*", "trained_model", "linear_ae", "classifier", "latent_metrics", "latent_views"],
    "step": ["train"],
    "driver": [
        "runner",
        "workdir",
        "parallel",
        "streaming",
        "faults",
        "distributed",
        "checkpoint",
        "tensorboard",
        "plots",
        "trained",
    ],
    # what an experiment measures and draws once its runs are trained (one module per study)
    "reports": ["reports", "reports.*"],
    "cli": ["cli"],
    # "": the package's __init__ (the small public API: data, losses, models, ops; load_run and export_run
    # from vae_jax.trained when first used). No module imports the package itself.
    "package": [""],
}
# The rules a review found broken, spelled out; the rank check below implies each of them.
FORBIDDEN = [
    ("maths", "driver"),
    ("maths", "data"),
    ("maths", "cli"),
    ("families", "driver"),
    ("families", "cli"),
    ("step", "driver"),
    ("step", "cli"),
    ("data", "driver"),
    ("data", "cli"),
    ("driver", "cli"),
    ("driver", "reports"),
    ("reports", "cli"),
]


def module_name(path: pathlib.Path) -> str:
    """``vae_jax/tasks/vae.py`` -> ``tasks.vae``; a package's ``__init__`` is the package (``""`` for the root)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    for layer, patterns in LAYERS.items():
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return layer
    raise AssertionError(f"vae_jax.{module} has no layer: add it to LAYERS here and to vae_jax.protocol's table")


def imported_names(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """Every ``import A.B`` (as ``("A.B", [])``) and ``from A import x, y`` (as ``("A", ["x", "y"])``) in the
    file, at any depth (function-level imports count as much as module-level ones)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def internal_imports(module: str, path: pathlib.Path) -> set[str]:
    """The vae_jax modules importing ``path`` runs: ``from vae_jax import compiling`` -> ``compiling``;
    ``from vae_jax.tasks import prior`` -> ``tasks.prior`` and the package ``tasks`` (its ``__init__`` runs
    first, unless the importer is inside that package). The root package (run by every import) is left out."""
    found = set()
    for name, members in imported_names(path):
        if name != "vae_jax" and not name.startswith("vae_jax."):
            continue
        base = name[len("vae_jax.") :] if name != "vae_jax" else ""
        targets = [f"{base}.{m}".lstrip(".") for m in members if f"{base}.{m}".lstrip(".") in MODULES]
        if base and (not members or len(targets) < len(members)):
            targets.append(base)  # names defined in the module ``base`` itself
        for target in targets:
            parts = target.split(".")
            found |= {
                ".".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if not (module + ".").startswith(".".join(parts[:i]) + ".")
            }
    return found - {"", module}


GRAPH = {module: internal_imports(module, path) for module, path in MODULES.items()}


def test_the_scan_sees_the_package_and_known_imports():
    assert len(MODULES) > 40
    assert {"tasks.vae", "protocol", "errors", "runner", "cli"} <= set(MODULES)
    assert {"protocol", "errors", "models.vae", "objectives", "arrays"} <= GRAPH["tasks.vae"]
    assert {"errors", "distributed"} <= GRAPH["cli"]
    assert "checkpoint" in GRAPH["runner"]  # a function-level import counts as much as a module-level one
    assert "arrays" in GRAPH["diagnostics"]  # (diagnostics imports it inside encode_posteriors)
    # The data package: a spec parser, one module per source, decode-once for several hosts.
    assert {"data.spec", "data.mnist", "data.tfds", "data.npz", "data.folder", "data.decoded"} <= set(MODULES)
    assert {"data.spec", "data.folder", "data.tfds", "errors"} <= GRAPH["data.decoded"]


def test_every_module_has_a_layer_and_imports_point_down():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"vae_jax.{m} ({layer_of(m)}) imports vae_jax.{d} ({layer_of(d)})"
        for m, deps in GRAPH.items()
        for d in sorted(deps)
        if rank[layer_of(d)] > rank[layer_of(m)]
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("importer, imported", FORBIDDEN)
def test_layer_rule(importer, imported):
    broken = [(m, d) for m, deps in GRAPH.items() for d in deps if layer_of(m) == importer and layer_of(d) == imported]
    assert not broken


def test_no_import_circle():
    state, stack = {}, []

    def visit(module):  # depth-first search; a module met again while on the stack closes a circle
        state[module] = "open"
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert len(state) == len(GRAPH) > 20  # every module of the package was visited


def test_the_circle_check_finds_a_circle():
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "errors": saved["errors"] | {"cli"}}  # cli -> errors -> cli
    try:
        with pytest.raises(AssertionError, match="import circle"):
            test_no_import_circle()
    finally:
        GRAPH = saved


def private_jax_imports(files: list[pathlib.Path], root: pathlib.Path) -> set[tuple[str, str]]:
    """``(file, module)`` for every import of ``jax._src`` (``from jax._src import x`` as ``jax._src.x``)."""
    return {
        (str(p.relative_to(root)), ".".join([name, *members[:1]]) if name == "jax._src" else name)
        for p in files
        for name, members in imported_names(p)
        if name.split(".")[:2] == ["jax", "_src"]
    }


def test_no_private_jax_imports(tmp_path):
    files = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "experiments").glob("*.py"))
    files += sorted((REPO / "benchmarks").glob("*.py"))
    assert len(files) > 50
    assert private_jax_imports(files, REPO) == set()
    # The check finds both spellings, at any depth.
    (tmp_path / "m.py").write_text("import jax._src.lib\ndef f():\n    from jax._src import distributed\n")
    assert private_jax_imports([tmp_path / "m.py"], tmp_path) == {
        ("m.py", "jax._src.lib"),
        ("m.py", "jax._src.distributed"),
    }


def unused_vae_jax_imports(path: pathlib.Path) -> set[str]:
    """Names a module binds with ``from vae_jax... import`` and never reads: re-exports."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vae_jax"
        for alias in node.names
    }
    read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return bound - read


def test_modules_import_each_name_from_where_it_is_defined(tmp_path):
    # Only a package's __init__ gathers names for its users; a module imports what it uses and nothing to pass on.
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    assert {str(p.relative_to(PACKAGE)): unused_vae_jax_imports(p) for p in modules} == {
        str(p.relative_to(PACKAGE)): set() for p in modules
    }
    relative = [p for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text())) if getattr(n, "level", 0)]
    assert relative == []  # the scans above read absolute imports only
    example = "from vae_jax.arrays import to_host  # passed on\nfrom vae_jax.errors import flag\nflag('x')\n"
    (tmp_path / "m.py").write_text(example)
    assert unused_vae_jax_imports(tmp_path / "m.py") == {"to_host"}


def test_importing_the_data_package_loads_no_driver_module():
    """``vae_jax.data`` (decode-once for several hosts included) runs without the training driver, Orbax or
    TensorFlow: what it needs from the driver (the processes' barrier) is passed in."""
    code = (
        "import sys, vae_jax.data\n"
        "driver = {'vae_jax.' + m for m in ('runner', 'distributed', 'faults', 'checkpoint', 'parallel', 'cli')}\n"
        "heavy = {'orbax', 'tensorflow', 'tensorflow_datasets'}\n"
        "print(sorted(m for m in sys.modules if m in driver or m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_importing_the_families_loads_no_driver_dependencies():
    code = (
        "import sys, vae_jax.tasks, vae_jax.linear_ae, vae_jax.train\n"
        "heavy = {'orbax', 'tqdm', 'tensorflow', 'grain', 'matplotlib'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
