"""``python -m nexa_core`` is the same as the ``nexa`` command."""

from nexa_core.entry import main

main()
