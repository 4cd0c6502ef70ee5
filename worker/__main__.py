"""``python -m worker`` is ``cancel-orders``."""

from worker.cli import main

raise SystemExit(main())
