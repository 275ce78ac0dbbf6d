"""The project's import graph, read from the source with `ast` (nothing is imported).

`ImportGraph.scan(root, packages)` records, for every module of `packages`, the project modules it
imports (module-level and function-local alike: a cycle dodged by a local import is still a
cycle) and the top-level external packages it imports. Imports under `if TYPE_CHECKING:` are
annotations only and are not edges.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path


def _module_name(rel: Path) -> str:
  parts = list(rel.with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
  return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosed_by(node: ast.AST, parents: dict, kinds: tuple[type, ...], test=lambda n: True) -> bool:
  while node in parents:
    node = parents[node]
    if isinstance(node, kinds) and test(node):
      return True
  return False


@dataclasses.dataclass
class ImportGraph:
  files: dict[str, Path]                               # module -> file
  edges: dict[str, set[str]]                           # module -> project modules it imports
  external: dict[str, set[str]]                        # module -> top-level external packages
  local: list[tuple[str, int, str]]                    # (file, line, project module) imported in a function

  @classmethod
  def scan(cls, root: Path, packages: tuple[str, ...]) -> ImportGraph:
    files = {_module_name(f.relative_to(root)): f for p in packages if (root / p).is_dir()
             for f in sorted((root / p).rglob("*.py"))}
    graph = cls(files, {m: set() for m in files}, {m: set() for m in files}, [])
    for mod, path in files.items():
      graph._add(mod, path, root)
    return graph

  def _resolve(self, name: str) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
      if ".".join(parts[:i]) in self.files:
        return ".".join(parts[:i])
    return None

  def _add(self, mod: str, path: Path, root: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parents = _parents(tree)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
          prefix = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
        else:
          prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in self.files else prefix for a in node.names]
      else:
        continue
      if _enclosed_by(node, parents, (ast.If,), lambda n: "TYPE_CHECKING" in ast.unparse(n.test)):
        continue
      in_function = _enclosed_by(node, parents, (ast.FunctionDef, ast.AsyncFunctionDef))
      for name in names:
        target = self._resolve(name)
        if target is None:
          self.external[mod].add(name.split(".")[0])
        elif target != mod:
          self.edges[mod].add(target)
          if in_function:
            self.local.append((path.relative_to(root).as_posix(), node.lineno, target))

  def cycles(self) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in self.edges:
      if start in index:
        continue
      work = [(start, iter(sorted(self.edges[start])))]
      index[start] = low[start] = len(index)
      stack.append(start)
      on_stack.add(start)
      while work:
        v, children = work[-1]
        child = next(children, None)
        if child is not None:
          if child not in index:
            index[child] = low[child] = len(index)
            stack.append(child)
            on_stack.add(child)
            work.append((child, iter(sorted(self.edges[child]))))
          elif child in on_stack:
            low[v] = min(low[v], index[child])
          continue
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
          component = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
              break
          if len(component) > 1:
            out.append(sorted(component))
    return out

  def package_arrows(self) -> set[tuple[str, str]]:
    """(from, to) between top-level packages."""
    return {(m.split(".")[0], t.split(".")[0]) for m, ts in self.edges.items() for t in ts
            if m.split(".")[0] != t.split(".")[0]}

  def reaches(self, start_prefix: str) -> set[str]:
    """Project modules reachable from the modules under `start_prefix` (themselves included)."""
    seen: set[str] = set()
    todo = [m for m in self.files if m == start_prefix or m.startswith(start_prefix + ".")]
    while todo:
      m = todo.pop()
      if m not in seen:
        seen.add(m)
        todo.extend(self.edges[m])
    return seen
