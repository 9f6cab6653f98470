"""review.py's station: a screened output folder served as a local web page (review.py's docstring)."""
