"""`python -m fakes`: start the fake provider server (see fakes.server)."""

from fakes.server import main

raise SystemExit(main())
