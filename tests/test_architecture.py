"""The layering of docs/architecture.md, checked on every import in the package's sources.

Shared layers never import a method; a method never imports another method; inside a
method, inference (``pipeline``) and training (``data``, ``train``) never import each
other, and the method's shared modules (config, checkpoints, features, ...) import
neither. Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import talkinghead

PACKAGE = Path(talkinghead.__file__).resolve().parent

# Above the methods: they may import anything.
APPLICATION = {"cli", "__main__", "commands", "serve", "batch", "app", "pipelines"}
INFERENCE = {"pipeline", "interpolation"}
TRAINING = {"data", "train"}
# A method's own command-line module is above both of its sides (and uses the CLI's console).
METHOD_FRONT = {"commands"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["talkinghead", *parts])


def imports_of(path: Path) -> set[str]:
    """Every talkinghead module `path` imports, anywhere in it (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("talkinghead"))
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the package uses absolute ones"
            if node.module and node.module.startswith("talkinghead"):
                found.add(node.module)
                # `from talkinghead.methods.ditto import checkpoints` names a module too.
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def role(module: str) -> tuple[str, str | None, str | None]:
    """(layer, method, side): layer is shared, registry, method or application."""
    parts = module.split(".")[1:]
    if not parts:
        return "root", None, None  # __version__, and lazy exports of the main entry points
    if parts[0] in APPLICATION:
        return "application", None, None
    if parts[0] != "methods":
        return "shared", None, None
    if len(parts) == 1:
        return "registry", None, None
    method = parts[1]
    if len(parts) == 2:
        return "method", method, "package"
    side = parts[2]
    if side in INFERENCE:
        return "method", method, "inference"
    if side in TRAINING:
        return "method", method, "training"
    if side in METHOD_FRONT:
        return "method", method, "front"
    return "method", method, "shared"


def existing(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        layer, method, side = role(importer)
        for target in sorted(t for t in imports_of(path) if existing(t)):
            t_layer, t_method, t_side = role(target)
            why = None
            if "root" in (layer, t_layer):
                continue
            if layer == "shared" and t_layer in ("method", "registry", "application"):
                why = "a shared layer imports a method or the application"
            elif layer == "method" and t_layer == "application" and side != "front":
                why = "a method imports the application layer"
            elif layer == "method" and t_layer == "method" and t_method != method:
                why = "one method imports another"
            elif layer == "method" and t_layer == "method" and side != "front":
                if {side, t_side} == {"inference", "training"}:
                    why = "inference and training of a method import each other"
                elif side in ("shared", "package") and t_side in ("inference", "training"):
                    if side == "package":
                        continue  # the package's lazy re-exports of its entry points
                    why = "a method's shared module imports its inference or training side"
            if why:
                bad.append(f"{importer} -> {target}: {why}")
    return bad


def test_imports_follow_the_layers() -> None:
    assert violations() == []


def test_the_walk_sees_real_imports() -> None:
    # Guards the test above: the scan must see imports at module level and inside functions.
    cli = imports_of(PACKAGE / "cli.py")
    assert "talkinghead.methods" in cli
    generate = imports_of(PACKAGE / "commands" / "generate.py")
    assert any(t.startswith("talkinghead.methods.ditto") for t in generate)


@pytest.mark.parametrize(
    ("importer", "target", "verdict"),
    [
        ("talkinghead.media.source", "talkinghead.methods.ditto.avatar", "shared"),
        ("talkinghead.methods.dithead.pipeline", "talkinghead.methods.difftalk.features", "method"),
        ("talkinghead.methods.difftalk.pipeline", "talkinghead.methods.difftalk.train", "sides"),
    ],
)
def test_the_rules_catch_what_they_should(importer: str, target: str, verdict: str) -> None:
    layer, method, side = role(importer)
    t_layer, t_method, t_side = role(target)
    if verdict == "shared":
        assert layer == "shared" and t_layer == "method"
    elif verdict == "method":
        assert layer == t_layer == "method" and method != t_method
    else:
        assert method == t_method and {side, t_side} == {"inference", "training"}
