"""Executed notebooks as committed results: machine paths removed, HTML rendered as a report.

The executed `.ipynb` keeps every cell; the HTML beside it is what a reviewer reads: narrative,
tables and figures, without code, parameter cells or cells tagged for removal.
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
    root = Path(root).resolve()
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(meta.get(key), str) and Path(meta[key]).resolve().is_relative_to(root):
            meta[key] = Path(meta[key]).resolve().relative_to(root).as_posix()
    prefix = f"{root}/"
    for out in (out for cell in nb.cells for out in cell.get("outputs", [])):
        if isinstance(out.get("text"), str):
            out["text"] = out["text"].replace(prefix, "")
        if out.get("traceback"):
            out["traceback"] = [line.replace(prefix, "") for line in out["traceback"]]
        if isinstance(out.get("data", {}).get("text/plain"), str):
            out["data"]["text/plain"] = out["data"]["text/plain"].replace(prefix, "")
    nbformat.write(nb, notebook)


def export_html(notebook: Path) -> Path:
    """Write <notebook>.html beside it: the report view, with CSS and images embedded.

    Only MathJax and require.js come from a CDN; offline formulas show as TeX source.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(
        remove_cell_tags=set(REMOVE_CELL_TAGS), remove_all_outputs_tags=set(REMOVE_OUTPUT_TAGS),
        enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4),
                                          resources={"metadata": {"path": str(notebook.parent)}})
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out
