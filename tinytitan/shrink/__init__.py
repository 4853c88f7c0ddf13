"""Shrinking before export: the task vocabulary (which tokens a task keeps) and the trim verb."""
