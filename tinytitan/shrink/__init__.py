"""Shrinking: the task vocabulary (which tokens a task keeps, the trim verb) and fewer layers (the prune verb)."""
