"""`python -m xray ...` is the `xray` command."""

from xray.cli import app

app()
