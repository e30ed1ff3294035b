"""STS, as much of it as SageMaker clients ask: GetCallerIdentity (query protocol, `Version=2011-06-15`).

The SageMaker SDKs ask it for the caller's account: `Session().default_bucket()` names the bucket it
creates `sagemaker-<region>-<account>` and checks the bucket's owner against `account_id()`. smlocal has
one account (`--account-id`, the one in every ARN it makes, from the request context as for every
service) and takes any keys, so every caller is the same IAM user of that account, `smlocal`. Its ARN and
unique id are shaped as IAM's provider shapes a role's (`arn:aws:iam::<account>:role/<name>`, `AROA` + 17
characters): `arn:aws:iam::<account>:user/smlocal` and `AIDA` + 17 characters, stable per account. A user,
not an assumed role, as for long-term access keys on AWS; IAM's SimulatePrincipalPolicy takes its ARN.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

from server.aws.context import RequestContext

# The IAM user every caller is (any access key, any secret).
CALLER = "smlocal"


def user_id(account_id: str, name: str) -> str:
    """A stable, IAM-shaped unique id (`AIDA` + 17 characters) for a user name in an account.

    The scheme of IAM's role ids (server.services.iam.provider.role_id), written again here because the
    services never import each other.
    """
    digest = hashlib.sha256(f"{account_id}/{name}".encode()).digest()
    return "AIDA" + base64.b32encode(digest).decode()[:17]


def caller_arn(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:user/{CALLER}"


class Sts:
    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {"GetCallerIdentity": self.get_caller_identity}

    def get_caller_identity(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        return {"UserId": user_id(ctx.account_id, CALLER), "Account": ctx.account_id,
                "Arn": caller_arn(ctx.account_id)}
