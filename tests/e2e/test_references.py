"""The repository is self-contained: no tracked file points at the developers' notes beside the
checkout (a clone does not have them), and the relative links of the documentation resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.newcomer

ROOT = Path(__file__).resolve().parents[2]
# Built from parts, so that this file does not name them itself.
OUTSIDE = re.compile("|".join(
    [re.escape(".." + "/shared")] + [rf"\b{name}\.md\b" for name in ("DESIGN", "ALGORITHMS", "PROTOCOL", "OFFLINE")]
))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files (images) and files deleted but not yet staged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


def test_no_tracked_file_refers_to_notes_outside_the_repository():
    files = tracked_files()
    assert len(files) > 50, "git ls-files listed too few files: is this a checkout?"
    offenders = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "point at docs/ instead:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_must():
    for text in ("see ../" + "shared/x", "(PROTOCOL" + ".md)", "`DESIGN" + ".md`"):
        assert OUTSIDE.search(text)
    assert not OUTSIDE.search("docs/protocol.md, docs/algorithms.md")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    return {anchor(m[1]) for m in re.finditer(r"^#+ (.+)$", markdown.read_text(), flags=re.M)}


DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "results" / "paper" / "README.md"])


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_relative_links_resolve(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(f"{target}: no {resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_documentation_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
