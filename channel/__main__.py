"""``python -m channel``: the same CLI as the ``channel`` script."""

from channel.cli import main

raise SystemExit(main())
