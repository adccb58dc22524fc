"""Executed notebooks as committed results: machine paths removed, HTML rendered as a report.

The executed `.ipynb` keeps every cell (code, parameters, full outputs); the HTML beside it is
what a reviewer reads: narrative, tables and figures, without code, parameter cells or cells
tagged for removal.
"""

from __future__ import annotations

from pathlib import Path

# Cells dropped from the HTML: papermill's two parameter cells and cells the author tagged.
REMOVE_CELL_TAGS = ("parameters", "injected-parameters", "remove-cell")
REMOVE_OUTPUT_TAGS = ("remove-output",)  # e.g. a long config dump


def relative_paths(notebook: Path, root: Path) -> None:
    """Rewrite absolute paths under root as relative ones (papermill metadata, outputs)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    prefix = str(Path(root).resolve()) + "/"

    def strip(text: str) -> str:
        return text.replace(prefix, "")

    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(meta.get(key), str):
            meta[key] = _relative(meta[key], root)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if isinstance(out.get("text"), str):
                out["text"] = strip(out["text"])
            if out.get("traceback"):
                out["traceback"] = [strip(line) for line in out["traceback"]]
            plain = out.get("data", {}).get("text/plain")
            if isinstance(plain, str):
                out["data"]["text/plain"] = strip(plain)
    nbformat.write(nb, notebook)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path


def export_html(notebook: Path) -> Path:
    """Write <notebook>.html beside it: the report view, with CSS and images embedded.

    Only MathJax and require.js come from a CDN; offline the page still shows its styles,
    outputs and figures (formulas as TeX source).
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    remove = TagRemovePreprocessor(
        remove_cell_tags=set(REMOVE_CELL_TAGS), remove_all_outputs_tags=set(REMOVE_OUTPUT_TAGS),
        enabled=True,
    )
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(remove, enabled=True)
    body, _ = exporter.from_notebook_node(
        nbformat.read(notebook, as_version=4),
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out
