"""``python -m llamagrid.gateway``: run the gateway."""

from llamagrid.gateway.main import main

main()
