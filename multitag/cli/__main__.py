"""`python -m multitag.cli ...`: the same command line (the flows start training this way)."""

from multitag.cli import main

main()
