"""The language: spec text -> checked spec, torch-free. source, diagnostics and codes (spans and errors),
ast and parse (the syntax tree), check/ and spec (the checked spec), params and overrides (the params
block, --set), summary (what `specc check` prints)."""
