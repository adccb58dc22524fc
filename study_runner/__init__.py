"""Executes a study: its spec's notebooks in order with papermill, recorded in a manifest.

`study` reads the spec, plans which steps are stale and runs them; `export` turns an executed
notebook into the committed result (relative paths, HTML report). The method itself is `rrglib`.
"""
