"""README.md and docs/*.md: every link to a local file or heading resolves, the README keeps the commands CI
runs and stays short, and its headline table is the one in docs/results.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text: str):
    """The lines outside fenced code blocks, with inline code spans removed."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "", line)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} (.+?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_local_link_resolves():
    broken = []
    for page in PAGES:
        for line in prose_lines(page.read_text()):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                    continue
                if anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_keeps_the_ci_commands_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && deepspeed engine/train.py configs/default.yaml" in readme
    assert "python3 -m pytest -q tests" in readme
    assert len(readme.splitlines()) <= 400


def test_readme_headline_table_is_the_results_page_table():
    """The README repeats the headline table of docs/results.md: the two must not drift apart."""
    def tables(text):
        return [line for line in text.splitlines() if line.startswith("|")]

    readme = tables((ROOT / "README.md").read_text())
    results = "\n".join(tables((ROOT / "docs" / "results.md").read_text()))
    assert readme and "\n".join(readme) in results
