"""The package layout: no import cycle between the packages or the pipeline stages, no sys.path edits."""

import ast
from pathlib import Path

from tuning.runtime.paths import REPO_ROOT

# What each part may import: runtime <- data <- model <- run_layout <- eval <- train. Evaluation reads a run folder
# (run_layout), never the training code; serve (the HTTP service) sits on eval, and nothing imports it.
ALLOWED = {
    "transformers_modify": set(),
    "tuning": set(),  # the package docstring
    "tuning.runtime": set(),
    "tuning.data": {"tuning.runtime"},
    "tuning.model": {"tuning.runtime", "tuning.data"},
    "tuning.run_layout": {"tuning.runtime", "tuning.model"},
    "tuning.eval": {"tuning.runtime", "tuning.data", "tuning.model", "tuning.run_layout"},
    "tuning.train": {"tuning.runtime", "tuning.data", "tuning.model", "tuning.run_layout", "tuning.eval",
                     "transformers_modify"},
    "tuning.serve": {"tuning.runtime", "tuning.data", "tuning.model", "tuning.run_layout", "tuning.eval"},
}
OURS = ("tuning", "transformers_modify")


def _part(module: str) -> str:
    return next(part for part in sorted(ALLOWED, key=len, reverse=True) if module.startswith(part))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in OURS}


def _python_files():
    for folder in ("tuning", "transformers_modify", "bench", "tools", "tests"):
        yield from (REPO_ROOT / folder).rglob("*.py")
    yield from REPO_ROOT.glob("*.py")


def test_each_part_imports_only_what_comes_before_it():
    for path in [*(REPO_ROOT / "tuning").rglob("*.py"), *(REPO_ROOT / "transformers_modify").rglob("*.py")]:
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        part = _part(module)
        for imported in _imports(path):
            other = _part(imported) if imported not in OURS else imported
            allowed = other == part or other in ALLOWED[part] or imported in ALLOWED[part]
            assert allowed, f"{module} imports {imported}"


def test_nothing_edits_sys_path():
    for path in _python_files():
        assert "sys.path.insert" not in path.read_text(encoding="utf-8") or path == Path(__file__), path
