"""Command-line tools: kat-train, kat-validate, kat-predict, kat-bench, kat-plot."""
