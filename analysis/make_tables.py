"""Markdown tables in the supplement's layout, figures (PNG) and one self-contained report.html
(beside --out) from stored study results; --csv DIR also writes the tidy frames of lsdc.results.

    python analysis/make_tables.py [--storage results] [--out tables.md] [--figures DIR] [--csv DIR]

Reads only the storage: no Ray cluster needs to run. See lsdc/tables.py.
"""
from lsdc.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
