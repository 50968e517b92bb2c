"""`python -m controller` is `ha-controller`."""

from controller.cli import main

main()
