"""Which way imports run (../shared/DESIGN.md): each layer uses only layers below it, and
the module graph has no cycle. Lazy imports inside functions count: they are imports."""

import ast
from pathlib import Path

import seqlab

ROOT = Path(seqlab.__file__).parent

# lowest first; a module belongs to the first layer with a matching prefix
LAYERS = [
    ("base", ["errors", "atomic", "config", "plugins", "metrics", "plots", "data", "models"]),
    ("run state", ["checkpoint", "engine", "sampling", "generate_text", "interop", "bench", "supervised", "mlm"]),
    ("pretraining loop", ["train"]),
    ("post-training, inspection, discovery", ["post", "inspect", "discover"]),
    ("recipes", ["recipes"]),
    ("cli", ["cli", "__main__"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """seqlab modules (as names below seqlab) that the file imports, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("seqlab"):
                target = node.module.removeprefix("seqlab").lstrip(".")
            else:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("seqlab").lstrip(".") for a in node.names if a.name.startswith("seqlab"))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {t for t in imports_of(p, m) if t in files and t not in ("", m)} for m, p in files.items()}


def layer(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module seqlab.{module} is in no layer: add it to LAYERS")


def test_imports_run_downwards_only():
    bad = [f"seqlab.{m} ({LAYERS[layer(m)][0]}) imports seqlab.{t} ({LAYERS[layer(t)][0]})"
           for m, targets in graph().items() for t in targets
           if layer(t) > layer(m) and not m.startswith("__main__")]
    assert not bad, "\n".join(bad)


def test_the_rules_named_in_the_design():
    g = graph()
    rules = [
        ("models know nothing of data, training, sampling or files", "models",
         ("data", "train", "engine", "sampling", "checkpoint", "post", "discover")),
        ("data knows nothing of models", "data", ("models",)),
        ("post never imports discover", "post", ("discover",)),
        ("below the loops nothing imports train.py or a post module", ("engine", "checkpoint", "sampling",
                                                                       "interop", "models", "data"),
         ("train", "post")),
    ]
    bad = []
    for why, who, forbidden in rules:
        who = (who,) if isinstance(who, str) else who
        for m, targets in g.items():
            if m.split(".")[0] in who:
                bad += [f"{why}: seqlab.{m} imports seqlab.{t}" for t in targets if t.split(".")[0] in forbidden]
    assert not bad, "\n".join(bad)


def find_cycles(g: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its submodules, which import a sibling through the
    # package, is how Python packages work, not a cycle between two modules
    return [" -> ".join(c) for c in cycles
            if not any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:]))]


def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation_and_a_cycle(tmp_path):
    """The test can fail: a model importing the sampler is caught, and so is a cycle."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from ..sampling import generate\n", encoding="utf-8")
    assert "sampling" in imports_of(p, "models.x")
    assert layer("sampling") > layer("models.x")
    p.write_text("from ._symmetry import orbit_table\n", encoding="utf-8")
    assert "discover.problems._symmetry" in imports_of(p, "discover.problems._grid")
    g = graph()
    g["discover.problems._symmetry"] = g["discover.problems._symmetry"] | {"discover.problems._grid"}
    assert find_cycles(g) == ["discover.problems._grid -> discover.problems._symmetry -> discover.problems._grid"]
