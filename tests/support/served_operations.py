"""Which operations smlocal serves, read from the registry `smlocal serve` builds, not from a list kept here.

The fuzz draws requests for exactly these: a new handler is fuzzed from the day it is registered, and an
operation of a model that smlocal does not answer is not mistaken for one it does.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from botocore.model import OperationModel, ServiceModel


@dataclass(frozen=True)
class ServedOperation:
    service: str  # botocore's service name (sagemaker, logs, cloudwatch, iam, sts, smlocal)
    name: str
    protocols: tuple[str, ...]  # every wire protocol the service speaks, as its model lists them
    model: ServiceModel

    @property
    def operation(self) -> OperationModel:
        return self.model.operation_model(self.name)

    def __repr__(self) -> str:  # hypothesis prints the drawn operation in a failing example
        return f"{self.service}.{self.name}"


@functools.cache
def served_operations() -> tuple[ServedOperation, ...]:
    """Every (service, operation) the app's registry dispatches, built once over a throwaway store."""
    from server.app import create_app
    from smlocal.core.lifecycle import Lifecycle
    from smlocal.core.settings import Settings
    from smlocal.core.store import Store
    from smlocal.core.tuning.lifecycle import TuningLifecycle

    with tempfile.TemporaryDirectory(prefix="smlocal-served-") as folder:
        settings = Settings(data_dir=Path(folder), run_jobs=False)
        store = Store(settings.db_path)
        try:
            lifecycle = Lifecycle(store)
            app = create_app(settings, store, lifecycle, None, TuningLifecycle(store, lifecycle))
            return tuple(ServedOperation(service.name, name, tuple(service.protocols), service.model)
                         for service in app.state.services for name in sorted(service.handlers))
        finally:
            store.close()
