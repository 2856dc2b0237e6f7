"""The docs hold together: every relative link and #anchor in README*.md and docs/ resolves (as
GitHub renders them), and every setting is in config.toml and docs/configuration.md (English and
Japanese) under its own table, with its real default, and nothing else is. No server needed."""

import re
import tomllib
import unicodedata
from pathlib import Path

from server.config import TABLES, Settings
from tests.conftest import ROOT

PAGES = sorted([*ROOT.glob("README*.md"), *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose(text: str) -> str:
    """The text without code blocks, whose brackets are not links."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, without punctuation and
    symbols (letters and digits of every script stay, Japanese included), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    text = page.read_text()
    for _, heading in HEADING.findall(prose(text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(HTML_ANCHOR.findall(text))


def links(page: Path) -> list[str]:
    text = CODE.sub("", prose(page.read_text()))
    return LINK.findall(text) + REFERENCE.findall(text)


def test_github_slugs():
    assert slug("Several models from one server") == "several-models-from-one-server"
    assert slug("The `n` parameter: choices (chat, completions)") == "the-n-parameter-choices-chat-completions"
    assert slug("[server]") == "server"
    assert slug("クイックスタート（5 分）") == "クイックスタート5-分"
    assert slug("設定の優先順位・環境変数") == "設定の優先順位環境変数"


def test_every_relative_link_and_anchor_resolves():
    assert ROOT / "README.md" in PAGES and ROOT / "README.ja.md" in PAGES and len(PAGES) > 20
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
            elif where.is_relative_to(ROOT) is False:
                broken.append(f"{page.relative_to(ROOT)}: {target} (outside the repository)")
    assert broken == []


def test_every_docs_page_is_reachable_from_the_readme():
    """Following links from README.md reaches every page under docs/."""
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in links(page):
            path = target.partition("#")[0]
            if path.endswith(".md") and not re.match(r"[a-z]+:", path):
                todo.append((page.parent / path).resolve())
    assert [str(p.relative_to(ROOT)) for p in PAGES if p not in reached] == []


def documented_settings(page: Path) -> dict[str, tuple[str, str]]:
    """name -> (table, default) from the page's tables: a `## [table]` heading, then rows
    `| \\`name\\` | \\`default\\` | ...`."""
    found, table = {}, None
    for line in page.read_text().splitlines():
        if line.startswith("## "):  # a table's section, or another one ([[models]]'s keys are not settings)
            heading = re.fullmatch(r"## \[(\w+)\]", line)
            table = heading.group(1) if heading else None
        row = re.match(r"^\| `(\w+)` \| `(.*?)` \|", line)
        if row and table is not None:
            assert row.group(1) not in found, f"{page.name}: {row.group(1)} twice"
            found[row.group(1)] = (table, row.group(2))
    return found


def test_every_setting_is_in_config_toml_and_the_configuration_docs():
    settings = set(Settings.model_fields) - {"models", "mcp_servers"}  # lists of tables, not settings
    tables = {name: table for table, names in TABLES.items() for name in names}
    assert set(tables) == settings and sum(map(len, TABLES.values())) == len(settings)  # each once
    config = tomllib.loads((ROOT / "config.toml").read_text())
    assert all(isinstance(values, dict) for values in config.values())  # no setting outside a table
    in_file = {name: table for table, values in config.items() for name in values}
    assert in_file == tables  # every setting, under its own table, and nothing else
    defaults = Settings()
    for page in ("docs/configuration.md", "docs/ja/configuration.md"):
        documented = documented_settings(ROOT / page)
        assert set(documented) == settings, page
        for name, (table, default) in documented.items():
            assert table == tables[name], f"{page}: {name} under [{table}], not [{tables[name]}]"
            assert tomllib.loads(f"value = {default}")["value"] == getattr(defaults, name), f"{page}: {name}"
