"""Markdown tables in the supplement's layout (and Figure 1 as PNG) from stored study results.

    python analysis/make_tables.py [--storage results] [--out tables.md]

Reads only the storage: no Ray cluster needs to run. See lsdc/tables.py.
"""
from lsdc.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
