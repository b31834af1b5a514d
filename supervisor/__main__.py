"""`python -m supervisor`: the `llamagrid` command."""

from supervisor.cli import main

main()
