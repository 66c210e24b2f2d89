"""Reports of a run: results tables (Markdown, LaTeX, HTML), plots, sample galleries, one HTML page.

Entry point: :func:`reports.render.render_report`. Importing the package loads nothing else, so the
harness can import it cheaply.
"""
