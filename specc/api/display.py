"""What a notebook shows of specc's values: diagnostics, reports and runs as HTML (`_repr_html_`),
every user text escaped. No third-party imports: the terminal's rendering, laid out as HTML."""

from __future__ import annotations

import html

_STYLE = "font-family: monospace; white-space: pre; line-height: 1.35"
_COLORS = {"error": "#c0392b", "warning": "#b9770e"}


def diagnostics_html(diagnostics) -> str:
    """Each diagnostic as the terminal renders it (header, spec line, caret, notes), coloured by severity."""
    blocks = []
    for d in diagnostics:
        header, *rest = d.render().split("\n")
        color = _COLORS.get(d.severity, "#333333")
        body = "".join(f"\n{html.escape(line)}" for line in rest)
        blocks.append(f'<div style="{_STYLE}"><span style="color: {color}; font-weight: bold">'
                      f'{html.escape(header)}</span>{body}</div>')
    return '<div class="specc-diagnostics">' + "".join(blocks) + "</div>"


def message_html(text: str) -> str:
    """A one-line error (a data error, a usage error) in the error's colour."""
    return f'<div style="{_STYLE}; color: {_COLORS["error"]}">{html.escape(text)}</div>'


def pre_html(text: str) -> str:
    return f'<pre style="margin: 0">{html.escape(text)}</pre>'


def table_html(columns: list[str], rows: list[list[str]]) -> str:
    """A plain HTML table of text cells, numbers right-aligned."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td style="text-align: right">{html.escape(cell)}</td>' for cell in row)
                   + "</tr>" for row in rows)
    return f'<table class="specc-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def shown(figure):
    """A matplotlib figure that a notebook shows as a picture: the API draws its figures without pyplot (so as
    not to switch a notebook's backend), and IPython shows a figure as a PNG only once its figure formatter is
    on, which pyplot's inline backend would have turned on; outside IPython the figure is returned as it is."""
    import sys

    if "IPython" in sys.modules:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            from IPython.core.pylabtools import select_figure_formats

            select_figure_formats(shell, {"png"})
    return figure
