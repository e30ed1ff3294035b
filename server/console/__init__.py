"""The web console (`/console`): jobs, logs and metrics in a browser, through the API's own operations."""

from server.console.app import CONSOLE_PATH, create_console, mount_console

__all__ = ["CONSOLE_PATH", "create_console", "mount_console"]
