"""Largest modules and functions of bot, webhooks and runner (lines), for the code-health figures.

    python3 scripts/code_sizes.py [ROOT]
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path

PACKAGES = ("bot", "webhooks", "runner")


def sizes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, module) and (lines, module:function), largest first."""
    modules, functions = [], []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(root))
            modules.append((len(text.splitlines()), name))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    functions.append(((node.end_lineno or node.lineno) - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main() -> None:
    modules, functions = sizes(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1])
    print("largest modules:  ", ", ".join(f"{name} {n}" for n, name in modules[:5]))
    print("longest functions:", ", ".join(f"{name} {n}" for n, name in functions[:5]))
    print(f"functions: {len(functions)}, median {statistics.median(n for n, _ in functions)} lines")


if __name__ == "__main__":
    main()
