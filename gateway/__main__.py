"""``python -m gateway``: run the gateway."""

from gateway.main import main

main()
