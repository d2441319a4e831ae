"""`python -m tunesmith` (also what `torchrun -m tunesmith train ...` runs)."""

from tunesmith.cli import main

main()
