"""MkDocs hook: the committed records and benchmark tables the pages link to (``results/``,
``benchmarks/*.md``) are served beside the pages, so those links are checked and work."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config) -> Files:
    extra = [p for p in (ROOT / "results").rglob("*") if p.is_file()]
    extra += sorted((ROOT / "benchmarks").glob("*.md"))
    for path in extra:
        files.append(File(str(path.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
