"""The tree reads bottom-up: src/base, io, model, run, kernel, attribution,
report, then cli/ on top. A file may use its own folder and the folders
below it, never one above: checked over the `#include` lines of the sources
and over the symbols the compiled objects define and use (a function called
through the public header counts too), and with no circle among headers."""
import pathlib
import re
import subprocess

import pytest

from conftest import BUILD_DIR, SOURCE_DIR

LAYERS = ["base", "io", "model", "run", "kernel", "attribution", "report"]
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["cli"] = len(LAYERS)
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(path, root):
    """The layer a source file belongs to: src/<layer>/..., or cli."""
    parts = path.relative_to(root).parts
    if parts[0] == "src":
        return parts[1]
    return parts[0]


def include_violations(root):
    """Every include of a file in a layer above the includer's, every include
    that names no file, and every circle among the headers."""
    root = pathlib.Path(root).resolve()
    bad, graph = [], {}
    files = sorted(root.glob("src/*/*.[ch]")) + sorted(root.glob("cli/**/*.[ch]"))
    for f in files:
        me = folder_of(f, root)
        if me not in RANK:
            bad.append(f"{f.relative_to(root)}: folder '{me}' is not a layer ({', '.join(LAYERS)}, cli)")
            continue
        for inc in INCLUDE.findall(f.read_text()):
            if inc == "pathkernel.h":
                continue
            # as the compiler looks: beside the includer first, then in src/
            target = (f.parent / inc).resolve()
            if not target.is_file():
                target = (root / "src" / inc).resolve()
            if not target.is_file():
                bad.append(f"{f.relative_to(root)}: includes \"{inc}\", which is no file of the tree")
                continue
            them = folder_of(target, root)
            graph.setdefault(f, set()).add(target)
            if RANK.get(them, 1 << 30) > RANK[me]:
                bad.append(f"{f.relative_to(root)} ({me}) includes {inc} ({them}), a layer above it")
    # circles: depth-first search over the include graph
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                bad.append("include circle: " + " -> ".join(str(p.relative_to(root)) for p in cycle))
            elif not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in list(graph):
        if not state.get(node):
            visit(node, [node])
    return bad


def test_no_upward_include_and_no_circle():
    bad = include_violations(SOURCE_DIR)
    assert not bad, "\n".join(bad)


def test_the_check_catches_an_upward_include_and_a_circle(tmp_path):
    """The checker itself, on a tree made to break each rule."""
    for layer in ("base", "run"):
        (tmp_path / "src" / layer).mkdir(parents=True)
    (tmp_path / "cli").mkdir()
    (tmp_path / "src/run/run.h").write_text('#include "base/base.h"\n')
    (tmp_path / "src/base/base.h").write_text('#include "pathkernel.h"\n')
    (tmp_path / "src/base/util.c").write_text('#include "base/base.h"\n')
    assert include_violations(tmp_path) == []
    (tmp_path / "src/base/util.c").write_text('#include "run/run.h"\n')
    assert any("a layer above it" in b for b in include_violations(tmp_path))
    (tmp_path / "src/base/util.c").write_text('#include "base/base.h"\n')
    (tmp_path / "src/base/base.h").write_text('#include "base/other.h"\n')
    (tmp_path / "src/base/other.h").write_text('#include "base/base.h"\n')
    assert any(b.startswith("include circle") for b in include_violations(tmp_path))


def symbols(obj):
    """(defined, used) global symbols of an object file."""
    out = subprocess.run(["nm", "-P", "--no-sort", str(obj)], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 2:
            continue
        name, kind = f[0], f[1]
        if kind == "U":
            used.add(name)
        elif kind in "TDBRVW":
            defined.add(name)
    return defined, used


def symbol_violations(objects):
    """Uses of a library function defined in a layer above the user's.
    objects: {layer: [object files]}."""
    where, uses = {}, []
    for layer, objs in objects.items():
        for o in objs:
            defined, used = symbols(o)
            for name in defined:
                where[name] = (layer, o)
            uses.append((layer, o, used))
    bad = []
    for layer, o, used in uses:
        for name in sorted(used):
            if name in where and RANK[where[name][0]] > RANK[layer]:
                bad.append(f"{o.name} ({layer}) uses {name}, defined in {where[name][1].name} ({where[name][0]})")
    return bad


def test_no_layer_calls_a_layer_above_it():
    objdir = BUILD_DIR / "CMakeFiles" / "pk_objects.dir" / "src"
    if not objdir.is_dir():
        pytest.skip(f"{objdir}: no object files of the library in this build")
    objects = {layer: sorted((objdir / layer).glob("*.o")) for layer in LAYERS}
    assert sum(len(v) for v in objects.values()) >= 20, objects
    bad = symbol_violations(objects)
    assert not bad, "\n".join(bad)


def test_the_symbol_check_catches_a_call_upward(tmp_path):
    """The checker itself: base calling a function that run defines."""
    (tmp_path / "low.c").write_text("int high(void);\nint low(void) { return high(); }\n")
    (tmp_path / "high.c").write_text("int high(void) { return 1; }\n")
    for name in ("low", "high"):
        subprocess.run(["cc", "-c", str(tmp_path / f"{name}.c"), "-o", str(tmp_path / f"{name}.o")], check=True)
    bad = symbol_violations({"base": [tmp_path / "low.o"], "run": [tmp_path / "high.o"]})
    assert bad == ["low.o (base) uses high, defined in high.o (run)"], bad
    assert symbol_violations({"run": [tmp_path / "low.o"], "base": [tmp_path / "high.o"]}) == []
