"""``python -m cctrain.schema [--markdown]``: print the policy schema (or its reference page)."""

from __future__ import annotations

import sys

from cctrain.schema import markdown, schema_json

if __name__ == "__main__":
    sys.stdout.write(markdown() if "--markdown" in sys.argv[1:] else schema_json())
