"""The report: the run summary and recommendation, plots, Markdown and HTML."""
