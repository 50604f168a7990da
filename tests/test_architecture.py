"""The layers of docs/architecture.md: no module imports a layer above its own."""

import ast
import os

import jaxsynth

# Package (or top-level module) of jaxsynth -> layer; a module may import its own package and
# lower layers only (docs/architecture.md).
LAYERS = {"errors": 0, "faults": 0, "hardware": 0, "__init__": 1, "files": 1, "config": 1,
          "data": 2, "models": 2, "training": 2,
          "diffusion": 3, "gan": 3, "metrics": 3,
          "synthesis": 4,
          "recipes": 5,
          "tasks": 6,
          "main": 7}


def imports(root):
  """(importing package, imported package, file, line) for every jaxsynth import."""
  for directory, _, names in os.walk(root):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      parts = os.path.relpath(path[:-3], root).split(os.sep)
      package = parts[0]
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and \
            node.module.split(".")[0] == "jaxsynth":
          rest = node.module.split(".")[1:]
          targets = [rest[0]] if rest else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
          targets = [a.name.split(".")[1] for a in node.names
                     if a.name.startswith("jaxsynth.")]
        for target in targets:
          yield package, target, path, node.lineno


def test_every_package_has_a_layer():
  root = os.path.dirname(jaxsynth.__file__)
  found = {name[:-3] if name.endswith(".py") else name for name in os.listdir(root)
           if not name.startswith("_") and (name.endswith(".py") or
                                           os.path.isdir(os.path.join(root, name, "")))
           and name != "__pycache__"}
  assert found <= set(LAYERS), f"give {sorted(found - set(LAYERS))} a layer here and in the doc"


def test_no_import_goes_up_a_layer():
  root = os.path.dirname(jaxsynth.__file__)
  upward = [f"{path}:{line}: {package} imports {target}"
            for package, target, path, line in imports(root)
            if target != package and LAYERS[target] >= LAYERS[package]]
  assert not upward, "\n".join(upward)
