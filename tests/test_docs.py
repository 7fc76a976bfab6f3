"""The documentation holds together: README.md stays a front page, every
relative link in README.md and docs/*.md reaches a file (and, with a
`#anchor`, a heading of that file, slugged as GitHub does), every docs page is
reachable from README.md or docs/README.md, and no page speaks of things a user
cannot see (issue numbers, "this session", "the development machine").

Pure text checks, no TensorFlow work. docs/_drafts/ (documentation not merged
yet) is left out.
"""

import os
import pathlib
import re
import unicodedata

import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "README.md"
MAX_README_LINES = 250
# Words a user cannot follow up: our issue numbers and the machines of our sessions.
HIDDEN_CONTEXT = re.compile(r"\bissues?\s*#?\d+|this session|development machine", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages():
    """README.md and every docs/*.md (not docs/_drafts/)."""
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text):
    """The lines of Markdown `text` outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1)[0] == fence[0]):
            fence = None if fence else marker.group(1)
            continue
        if fence is None:
            lines.append(line)
    return lines


def slug(heading):
    """GitHub's anchor for a heading's text: link syntax dropped, lower case,
    everything but letters, marks, digits, `_`, `-` and spaces removed, spaces
    turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(text):
    """The anchors of every heading in `text`, repeated headings numbered as
    GitHub numbers them (`name`, `name-1`, ...)."""
    found, seen = set(), {}
    for line in prose_lines(text):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def links(text):
    """Every link target in `text` outside code (fenced blocks and code spans)."""
    prose = "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose_lines(text))
    return LINK.findall(prose)


def broken_links(page, text):
    """`(target, reason)` of every relative link of `page` (its Markdown
    `text`) that does not resolve."""
    broken = []
    for target in links(text):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append((target, "no such file"))
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append((target, f"no heading #{anchor} in {os.path.relpath(resolved, ROOT)}"))
    return broken


def linked_files(page):
    """The files that the relative links of `page` point to."""
    return {
        (page.parent / target.partition("#")[0]).resolve()
        for target in links(page.read_text())
        if not SCHEME.match(target) and target.partition("#")[0]
    }


class DocsTest(tf.test.TestCase):
    def test_readme_is_a_front_page(self):
        self.assertLessEqual(len(README.read_text().splitlines()), MAX_README_LINES)

    def test_every_relative_link_resolves(self):
        broken = {
            str(page.relative_to(ROOT)): broken_links(page, page.read_text()) for page in pages()
        }
        self.assertEqual({page: found for page, found in broken.items() if found}, {})

    def test_every_docs_page_is_linked_from_the_readme_or_the_index(self):
        reachable = linked_files(README) | linked_files(INDEX)
        orphans = [page.name for page in DOCS.glob("*.md") if page.resolve() not in reachable]
        self.assertEqual(orphans, [])

    def test_no_page_speaks_of_issues_or_our_machines(self):
        found = {
            str(page.relative_to(ROOT)): HIDDEN_CONTEXT.findall(page.read_text())
            for page in pages()
        }
        self.assertEqual({page: words for page, words in found.items() if words}, {})

    def test_the_checks_see_what_they_guard(self):
        planted = "# Top\n\n## What happens when ...\n\n```sh\n# not a heading\n```\n## Top\n"
        self.assertEqual(anchors(planted), {"top", "what-happens-when-", "top-1"})
        text = (
            "[ok](docs/README.md) ![ok](#results) [gone](nowhere.md) "
            "[bad](docs/README.md#no-such-heading) `[code](nowhere.md)` "
            "[web](https://example.com/x.md)"
        )
        self.assertEqual(
            broken_links(README, text),
            [
                ("nowhere.md", "no such file"),
                ("docs/README.md#no-such-heading", "no heading #no-such-heading in docs/README.md"),
            ],
        )
        self.assertEqual(
            slug("Speed: kd_tf against `keras.distillation.Distiller`"),
            "speed-kd_tf-against-kerasdistillationdistiller",
        )
        self.assertEqual(slug("scikit-learn's 8×8 digits"), "scikit-learns-88-digits")
        self.assertTrue(HIDDEN_CONTEXT.search("results of Issue 12"))

if __name__ == "__main__":
    tf.test.main()
