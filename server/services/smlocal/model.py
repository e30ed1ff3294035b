"""Where smlocal's own service model lives, and a botocore session that knows it.

The model (`data/smlocal/<api version>/service-2.json`) is in botocore's own format, so the server
validates requests against it like any AWS service's, and boto3 clients (the `smlocal interrupt`
command, a user's script) sign and send them like any AWS call: `smlocal_session().client("smlocal")`.
"""

from __future__ import annotations

from pathlib import Path

import botocore.session

SERVICE_NAME = "smlocal"
MODEL_DIR = Path(__file__).resolve().parent / "data"


def smlocal_session() -> botocore.session.Session:
    """A botocore session whose loader also finds smlocal's model (the AWS models stay as they are)."""
    session = botocore.session.get_session()
    loader = session.get_component("data_loader")
    if str(MODEL_DIR) not in loader.search_paths:
        loader.search_paths.insert(0, str(MODEL_DIR))
    return session
