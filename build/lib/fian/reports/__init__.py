"""LaTeX tables in the paper's layout and figures."""
