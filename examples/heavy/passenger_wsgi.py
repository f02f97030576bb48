"""An app with a sizeable import footprint, for comparing smart and direct spawning:
several stdlib packages plus a generated module holding a large constant table."""

import decimal
import email.mime.multipart
import email.mime.text
import email.parser
import http.client
import http.cookies
import json
import os
import sys
from pathlib import Path

here = Path(__file__).parent
table_module = here / "big_table.py"
if not table_module.exists():  # generated once: 60,000 entries of constant data
    rows = ",\n".join(f"    {i}: ('item-{i:06d}', {i * 0.5}, {{'n': {i}}})"
                      for i in range(60_000))
    tmp = table_module.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(f"TABLE = {{\n{rows}\n}}\n")
    tmp.replace(table_module)
sys.path.insert(0, str(here))
import big_table  # noqa: E402

MODULES = (decimal, email.mime.multipart, email.mime.text, email.parser, http.client,
           http.cookies, json)


def application(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "entries": len(big_table.TABLE)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
