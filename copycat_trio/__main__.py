"""`python -m copycat_trio` is the `copycat-trio` command."""

from .cli import main

main()
