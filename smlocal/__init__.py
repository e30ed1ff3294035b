"""smlocal's public Python helpers. The service itself lives in `server` and `runner`; `smlocal.testing`
is the pytest plugin for users' own integration tests."""
