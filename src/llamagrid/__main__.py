"""`python -m llamagrid`: the `llamagrid` command."""

from llamagrid.cli import main

main()
