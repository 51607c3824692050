"""Turning results into text: Markdown tables, text bar charts, results files.

Every exercise's renderer builds its section from these, and the same Markdown is printed on
the terminal and pasted into REPORT.md, so a table reads the same in both places.
"""

import json
import os
import tempfile


def markdown_table(headers, rows, align=None):
    """A GitHub Markdown table with padded columns, so it also reads well as plain text.

    `align` is a string with one of "l" or "r" per column (numbers right, by default).
    """
    cells = [[str(cell) for cell in row] for row in rows]
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]

    def line(row):
        padded = [cell.rjust(w) if a == "r" else cell.ljust(w)
                  for cell, w, a in zip(row, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line([str(h) for h in headers]), rule] + [line(row) for row in cells])


def bar_chart(labels, values, width=40, unit="s", mark=None):
    """A text bar chart, one bar per label, scaled to the largest value; `mark` flags a label."""
    top = max(values) if values else 0
    label_width = max(len(str(label)) for label in labels) if labels else 0
    lines = []
    for label, value in zip(labels, values):
        bar = "#" * max(1, round(width * value / top)) if top > 0 else ""
        flag = "  <- best" if label == mark else ""
        name = str(label).rjust(label_width)
        lines.append(f"{name} | {bar.ljust(width)} {value:.3f} {unit}{flag}")
    return "\n".join(lines)


def seconds(value):
    return "-" if value is None else f"{value:.3f}"


def percent(value):
    return "-" if value is None else f"{value:.1f}%"


def plural(count, noun):
    """The count and the noun, plural unless the count is 1: "1 worker", "2 workers"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def write_json(path, data):
    """Write JSON atomically: a reader (or a crash) never sees a half-written results file."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path):
    """The parsed file, or None when it is missing or unreadable."""
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def write_text(path, text):
    """Write to a temporary file beside `path`, then rename it over `path` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; results are not
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
