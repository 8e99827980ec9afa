"""The web console at ``/console`` (see `tollway.proxy.console.app`)."""
