"""``python -m ivcp`` (and ``torchrun -m ivcp classify ...``): the ``ivcp`` command."""

from .cli import main


main()
