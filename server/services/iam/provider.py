"""IAM, as much of it as SageMaker clients ask: GetRole and SimulatePrincipalPolicy (query protocol).

smlocal enforces no IAM permissions: a job runs with whatever role ARN it names. This provider says so
in IAM's own terms, so that clients which check a role before they use it (SDK v3's role validation and
its staging-bucket check, `GetRole` for a role name) get the answer that matches what smlocal will do:

- every role exists in the caller's account, with a trust policy that lets SageMaker assume it;
- the principal's own policies allow every action on every resource. What the request adds is evaluated
  on top: an explicit `Deny` in `PolicyInputList` denies (`explicitDeny`), and with
  `PermissionsBoundaryPolicyInputList` an action the boundary does not allow is an `implicitDeny`.
  Statements with a `Condition` are not evaluated (smlocal has no request context to test them with).

Error texts are IAM's own as clients report them: `Invalid Entity Arn: <arn>` and
`ResourceNames are not in a valid ARN format: <name>.` (InvalidInput).
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import regex

from server.aws.context import RequestContext
from server.aws.pagination import decode_token, encode_token
from smlocal.core.errors import ApiError

# A user, group or role of any partition and account: what SimulatePrincipalPolicy may simulate.
_PRINCIPAL_ARN = regex.compile(r"arn:aws[a-z\-]*:iam::\d{12}:(?:user|group|role)/[\w+=,.@\-/]+")
_ARN = regex.compile(r"arn:[^:]+:[^:]*:[^:]*:[^:]*:.+")
# IAM's default page size for its paginated operations.
DEFAULT_MAX_ITEMS = 100
SAGEMAKER_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def _invalid_input(message: str) -> ApiError:
    return ApiError("InvalidInput", message)


def role_id(account_id: str, name: str) -> str:
    """A stable, IAM-shaped unique id (`AROA` + 17 characters) for a role name in an account."""
    digest = hashlib.sha256(f"{account_id}/{name}".encode()).digest()
    return "AROA" + base64.b32encode(digest).decode()[:17]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _matches(patterns: list[str], value: str, case_sensitive: bool) -> bool:
    if case_sensitive:
        return any(fnmatch.fnmatchcase(value, p) for p in patterns)
    return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in patterns)


def _applies(statement: dict[str, Any], action: str, resource: str) -> bool:
    """Whether a statement without a Condition covers the action on the resource (wildcards `*`, `?`)."""
    if "Condition" in statement:
        return False
    if "Action" in statement:
        action_hit = _matches(_as_list(statement["Action"]), action, case_sensitive=False)
    else:
        action_hit = not _matches(_as_list(statement.get("NotAction")), action, case_sensitive=False)
    if "Resource" in statement:
        resource_hit = _matches(_as_list(statement["Resource"]), resource, case_sensitive=True)
    else:
        resource_hit = not _matches(_as_list(statement.get("NotResource")), resource, case_sensitive=True)
    return action_hit and resource_hit


def _statements(documents: list[str], source: str) -> list[tuple[str, dict[str, Any]]]:
    """(source policy id, statement) of every statement of the given JSON policy documents."""
    found = []
    for n, text in enumerate(documents, 1):
        try:
            document = json.loads(text)
            statements = document["Statement"]
        except (ValueError, KeyError, TypeError):
            raise ApiError("MalformedPolicyDocument", "Syntax errors in policy.") from None
        for statement in [statements] if isinstance(statements, dict) else statements:
            if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
                raise ApiError("MalformedPolicyDocument", "Syntax errors in policy.")
            found.append((f"{source}.{n}", statement))
    return found


def _matched(source: str) -> dict[str, Any]:
    # A policy handed in with the request belongs to no entity: IAM calls its type "none".
    return {"SourcePolicyId": source, "SourcePolicyType": "none"}


class Iam:
    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {"GetRole": self.get_role, "SimulatePrincipalPolicy": self.simulate_principal_policy}

    def __init__(self) -> None:
        # Every role "exists" from the moment the service does.
        self.created = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def get_role(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        name = params["RoleName"]
        return {"Role": {
            "Path": "/", "RoleName": name, "RoleId": role_id(ctx.account_id, name),
            "Arn": f"arn:aws:iam::{ctx.account_id}:role/{name}", "CreateDate": self.created,
            # IAM hands policy documents out URL-encoded; botocore decodes them for the caller.
            "AssumeRolePolicyDocument": quote(json.dumps(SAGEMAKER_TRUST_POLICY, separators=(",", ":"))),
            "MaxSessionDuration": 3600, "RoleLastUsed": {},
        }}

    def simulate_principal_policy(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        source = params["PolicySourceArn"]
        if not _PRINCIPAL_ARN.fullmatch(source):
            raise _invalid_input(f"Invalid Entity Arn: {source}")
        resources = params.get("ResourceArns") or ["*"]
        for resource in resources:
            if resource != "*" and not _ARN.fullmatch(resource):
                raise _invalid_input(f"ResourceNames are not in a valid ARN format: {resource}.")
        added = _statements(params.get("PolicyInputList") or [], "PolicyInputList")
        boundary = (_statements(params["PermissionsBoundaryPolicyInputList"], "PermissionsBoundaryPolicyInputList")
                    if params.get("PermissionsBoundaryPolicyInputList") else None)
        results = [self._evaluate(action, resource, added, boundary, bool(params.get("ResourceArns")))
                   for action in params["ActionNames"] for resource in resources]
        query = {k: v for k, v in params.items() if k not in ("Marker", "MaxItems")}
        start = decode_token(params.get("Marker"), query)
        end = start + params.get("MaxItems", DEFAULT_MAX_ITEMS)
        page: dict[str, Any] = {"EvaluationResults": results[start:end], "IsTruncated": end < len(results)}
        if page["IsTruncated"]:
            page["Marker"] = encode_token(end, query)
        return page

    @staticmethod
    def _evaluate(action: str, resource: str, added: list[tuple[str, dict[str, Any]]],
                  boundary: list[tuple[str, dict[str, Any]]] | None, named_resource: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"EvalActionName": action, "EvalResourceName": resource,
                                  "MissingContextValues": []}
        if named_resource:
            result["EvalDecisionDetails"] = {}  # same-account simulation of a named resource: present, empty
        denials = [source for source, s in added + (boundary or [])
                   if s["Effect"] == "Deny" and _applies(s, action, resource)]
        if denials:
            return {**result, "EvalDecision": "explicitDeny", "MatchedStatements": [_matched(denials[0])]}
        if boundary is not None and not any(s["Effect"] == "Allow" and _applies(s, action, resource)
                                            for _, s in boundary):
            return {**result, "EvalDecision": "implicitDeny", "MatchedStatements": [],
                    "PermissionsBoundaryDecisionDetail": {"AllowedByPermissionsBoundary": False}}
        allowed_by = [source for source, s in added if s["Effect"] == "Allow" and _applies(s, action, resource)]
        return {**result, "EvalDecision": "allowed", "MatchedStatements": [_matched(s) for s in allowed_by]}
