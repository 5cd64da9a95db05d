"""Markdown results (claims, scorecard, tables) as HTML pages, which the Snakemake report shows inline
(it offers any other text file as a download only)."""

from html import escape

from markdown_it import MarkdownIt

# CommonMark with GitHub's pipe tables: the claims and tables are written as such (verdict_engine, readers)
_RENDERER = MarkdownIt("commonmark").enable("table")

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 1.5em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def markdown_page(markdown: str, title: str) -> str:
    """One self-contained HTML page (no scripts, no external files) showing `markdown`."""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{_RENDERER.render(markdown)}</body>\n</html>\n"
    )
