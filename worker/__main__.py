"""``python -m worker`` is ``cancel-orders``."""

from worker.entry import main

raise SystemExit(main())
