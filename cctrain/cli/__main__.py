"""``python -m cctrain.cli``: the ``cctrain`` command without its console script."""

from cctrain.cli import main

main(prog_name="cctrain")
