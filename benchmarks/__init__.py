"""Side-by-side benchmark of our server against gunicorn and real Passenger (issue 3).

Run it with `python -m benchmarks.run` (or `tox -e bench`); see benchmarks/README.md.
"""
