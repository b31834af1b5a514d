"""`python -m llamagrid.worker`."""

from llamagrid.worker.main import main

main()
