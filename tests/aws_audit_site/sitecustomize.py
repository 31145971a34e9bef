"""Test-only AWS audit: record every AWS operation the *agent* performs.

Loaded in the pytest process by ``tests/fixtures/aws_audit.py`` and, through
``PYTHONPATH``, in every agent subprocess the suite starts. It wraps botocore's
``Session.create_client`` and registers a ``before-call`` hook on clients whose
user agent carries ``opsagent/`` (made by ``agent.aws.client``), so calls that
tests make to set up the moto server are not counted. Each call appends one
line ``<signing name>:<OperationName>`` to the file named by BOTO_AUDIT_FILE.
This is a test harness, not product code: the agent has no switch for it.
"""

from __future__ import annotations

import os

_FILE_ENV = "BOTO_AUDIT_FILE"


def install() -> None:
    path = os.environ.get(_FILE_ENV)
    if not path:
        return
    try:
        import botocore.session
    except ImportError:
        return
    original = botocore.session.Session.create_client
    if getattr(original, "_opsagent_audit", False):
        return

    def create_client(self, service_name, *args, **kwargs):  # type: ignore[no-untyped-def]
        client = original(self, service_name, *args, **kwargs)
        config = kwargs.get("config")
        extra = getattr(config, "user_agent_extra", None) or ""
        if "opsagent/" in extra:
            prefix = client.meta.service_model.signing_name or service_name

            def record(model, **_kw):  # type: ignore[no-untyped-def]
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(f"{prefix}:{model.name}\n")

            client.meta.events.register("before-call.*.*", record)
        return client

    create_client._opsagent_audit = True  # type: ignore[attr-defined]
    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


install()
