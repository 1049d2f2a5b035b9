"""README.md and docs/ can't rot: every relative link lands on a file (and a heading, when it names
one), every setting is documented, and the commands README.md gives are the ones that exist and
that CI runs. `make docs` (MkDocs, strict) checks docs/ again as the site renders it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and [text](target "title"); images too. Autolinks <https://…> are not relative.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """Markdown without its code blocks and code spans, where a `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings."""
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def relative_links(page: Path) -> list[str]:
    """Every link target in a page that is neither a URL with a scheme nor an e-mail address."""
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def shown(path: Path) -> Path:
    """A path as the repository names it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def broken(page: Path, target: str) -> str | None:
    """Why a relative link from `page` leads nowhere, or None when it lands."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{shown(file)} does not exist"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{shown(file)} has no heading with the anchor #{anchor}"
    return None


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


class TestLinks:
    def test_readme_links_into_the_docs(self) -> None:
        targets = relative_links(README)
        assert any(t.startswith("docs/") for t in targets), "README.md links to no docs page"

    @pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_every_relative_link_lands(self, page: Path) -> None:
        problems = [f"({t}): {why}" for t in relative_links(page) if (why := broken(page, t))]
        assert problems == [], f"{page.relative_to(ROOT)}: " + "; ".join(problems)

    def test_a_broken_link_is_caught(self, tmp_path: Path) -> None:
        (tmp_path / "there.md").write_text("# A heading\n")
        page = tmp_path / "page.md"
        page.write_text(
            "[ok](there.md#a-heading) [gone](missing.md) [no anchor](there.md#nothing) "
            "`[code](ignored.md)` [web](https://example.com/x.md)\n"
        )
        assert relative_links(page) == ["there.md#a-heading", "missing.md", "there.md#nothing"]
        assert broken(page, "there.md#a-heading") is None
        assert broken(page, "missing.md") is not None
        assert broken(page, "there.md#nothing") is not None

    def test_every_docs_page_is_in_the_navigation(self) -> None:
        nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
        missing = [
            str(p.relative_to(DOCS))
            for p in DOCS.rglob("*.md")
            if str(p.relative_to(DOCS)) not in nav
        ]
        assert missing == []


class TestReference:
    def test_every_setting_is_documented(self) -> None:
        documented = (DOCS / "settings.md").read_text(encoding="utf-8")
        missing = [
            f"TOKENFARM_{name.upper()}"
            for name in Settings.model_fields
            if f"`TOKENFARM_{name.upper()}`" not in documented
        ]
        assert missing == [], f"docs/settings.md lacks {', '.join(missing)}"


class TestTheTwoCommands:
    def commands(self) -> list[str]:
        """The `make` commands in README.md's "Two commands" section."""
        text = README.read_text(encoding="utf-8")
        section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"^(make [a-z-]+)", section, re.MULTILINE)

    def test_readme_gives_run_and_test(self) -> None:
        assert self.commands() == ["make run", "make test"]

    def test_each_is_a_make_target(self) -> None:
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        for command in self.commands():
            target = command.removeprefix("make ")
            assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no Makefile target {target}"

    def test_ci_runs_the_readme_test_command(self) -> None:
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        assert re.search(r"^make test$", ci, re.MULTILINE)
        assert re.search(r"^make docs$", ci, re.MULTILINE)
