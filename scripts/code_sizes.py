"""The largest modules (lines) and functions (lines, def to last line) under bot, webhooks and runner.

    python3 scripts/code_sizes.py [ROOT] [--top N]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def sizes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, path) of every module and (lines, path:line name) of every function."""
    modules, functions = [], []
    for package in ("bot", "webhooks", "runner"):
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(root)
            modules.append((len(text.splitlines()), str(rel)))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append(((node.end_lineno or node.lineno) - node.lineno + 1,
                                      f"{rel}:{node.lineno} {node.name}"))
    return modules, functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", type=Path)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    modules, functions = sizes(args.root)
    lengths = sorted(n for n, _ in functions)
    print(f"{len(modules)} modules, {sum(n for n, _ in modules)} lines; "
          f"{len(functions)} functions, median {lengths[len(lengths) // 2]} lines")
    for title, rows in (("largest modules:", modules), ("largest functions:", functions)):
        print(title)
        for n, where in sorted(rows, reverse=True)[:args.top]:
            print(f"  {n:5} {where}")


if __name__ == "__main__":
    main()
