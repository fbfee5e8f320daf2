"""A fake Kubernetes API server on loopback, for the ``kubernetes-job`` executor.

No kube-apiserver can run in the test environment, so this one speaks the real REST
paths and JSON shapes of the calls the bridge makes, and simulates the Job controller
and the kubelet just enough to run a Job. It is a development tool, never shipped.

Starting it
-----------
In tests::

    async with FakeKube() as kube:
        settings = KubeSettings.explicit(
            base_url=kube.base_url, token_file=kube.write_token_file(tmp_path / "token")
        )
        ...
        assert kube.running_pods() == []

Standalone: ``python -m devtools.fake_kube [--port N] [--token T] [--start-delay S]``
prints its URL and token and serves until Ctrl-C.

Constructor: ``FakeKube(*, token=None, program=None, start_delay_s=0.0, port=0)``:
``token`` is the one bearer token it accepts (random when not given); ``program``
replaces the built-in interpreter of a container's command and args (see
``programs``); ``start_delay_s`` is how long a Pod stays ``Pending``.

The API (JSON; errors are ``Status`` objects with ``reason`` and ``code``)
-------------------------------------------------------------------------
- ``POST /apis/batch/v1/namespaces/{ns}/jobs``: 201 and the Job (uid, resourceVersion,
  creationTimestamp, spec defaults: ``backoffLimit`` 6, ``parallelism`` 1, a selector
  on ``batch.kubernetes.io/controller-uid``); 409 ``AlreadyExists`` for a taken name;
  422 ``Invalid`` for a bad name or label value, a missing image or container, a
  ``restartPolicy`` other than ``Never``/``OnFailure``; 400 ``BadRequest`` for a
  namespace that differs from the path's, or a non-string in command/args/env.
- ``GET .../jobs`` (``labelSelector``), ``GET .../jobs/{name}`` (and ``/status``): the
  Job with a live ``status`` (active/succeeded/failed, startTime, completionTime,
  conditions); 404 ``NotFound``.
- ``DELETE .../jobs/{name}``: ``propagationPolicy`` from the query or a
  ``DeleteOptions`` body; ``Background``/``Foreground`` stop and remove the Pods,
  ``Orphan`` (the default, as in Kubernetes) leaves them running.
- ``GET /api/v1/namespaces/{ns}/pods`` (``labelSelector``: ``k=v``, ``k!=v``, ``k``,
  ``!k``), ``GET .../pods/{name}``.
- ``GET .../pods/{name}/log``: ``container`` (required when the pod has several),
  ``follow=true`` (chunked, line by line as the program writes, ending when the
  container stops or the pod is deleted), ``timestamps=true`` (``RFC3339Nano``
  prefixes), ``sinceTime``, ``sinceSeconds``; 400 while the pod is ``Pending``.
- Anything else: 404 ``NotFound``. Without ``Authorization: Bearer <token>``: 401
  ``Unauthorized``. In a namespace of ``kube.forbidden_namespaces``: 403 ``Forbidden``.

For assertions and faults
-------------------------
``kube.requests`` records every request (method, path, query, status, authorized,
parsed body; a log stream when it ends); ``kube.requests_to(method, path_part)``
filters it. ``kube.job(ns, name)`` and ``kube.cluster`` give the objects (a Pod's log
lines: ``pod.logs``); ``kube.running_pods()`` the Pods still Pending or Running.
``kube.fail_next(code, count=, method=, path_contains=, retry_after=)`` answers the
next matching requests with that status, ``kube.slow_next(delay_s, count=, method=,
path_contains=)`` carries them out but answers late (a response lost in flight); both
return the ``Fault``, whose ``reached`` event is set when one arrives.
``kube.cut_log_streams()`` ends every open ``follow`` stream at once, as an API server
restart would.

Only a Pod's first container runs the program; other containers have no log and exit 0
with it. Jobs run one Pod at a time (``parallelism`` and ``completions`` are 1).
"""

from devtools.fake_kube.cluster import Cluster, FakeJob, FakePod
from devtools.fake_kube.programs import Container, Program, builtin_program
from devtools.fake_kube.server import FakeKube, RecordedRequest

__all__ = [
    "Cluster",
    "Container",
    "FakeJob",
    "FakeKube",
    "FakePod",
    "Program",
    "RecordedRequest",
    "builtin_program",
]
