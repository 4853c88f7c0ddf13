"""The pipeline: a recipe and `tinytitan run`, which takes it through every stage."""
