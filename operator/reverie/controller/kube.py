"""A small asyncio client of the Kubernetes REST API, and optimistic-concurrency status updates.

The operator talks to the API server with plain JSON dicts over ``aiohttp``
(credentials come from a kubeconfig or the in-cluster ServiceAccount, loaded
by the official client's config loaders).  Kopf brings its own client for its
watches; this one is for what the handlers read and write, and it counts its
requests so the benchmark can report API calls per cycle.

:func:`mutate_status` is the one way objects we share with other writers
(the ModelLineage's ``status``) are changed: read the object, compute the new
status with a pure function, write it back with the read ``resourceVersion``,
and on a 409 Conflict start again from fresh state.  Two cycles racing to
claim or promote into one lineage therefore never overwrite each other.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from reverie import GROUP, VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]
StatusMutation = Callable[[Obj], "Obj | None"]


class ApiError(Exception):
    """A non-2xx answer of the API server, with its HTTP status and Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists on create, or a stale resourceVersion on update."""
        return self.status == 409


class ConflictRetriesExhausted(Exception):
    """mutate_status met a 409 on every attempt: too many writers at once."""


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API: ``/api/v1`` or ``/apis/<group>/<version>``, plural."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [root]
        if namespace is not None:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)


SLEEPCYCLES = Resource(GROUP, VERSION, "sleepcycles")
MODELLINEAGES = Resource(GROUP, VERSION, "modellineages")
JOBS = Resource("batch", "v1", "jobs")
PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
EVENTS = Resource("", "v1", "events")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
TRAINJOBS = Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOBSETS = Resource("jobset.x-k8s.io", "v1alpha2", "jobsets")


def load_configuration(kubeconfig: str | None = None) -> Configuration:
    """Credentials: an explicit kubeconfig, else in-cluster, else $KUBECONFIG / ~/.kube/config."""
    cfg = Configuration()
    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cfg
    try:
        kube_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        # Read $KUBECONFIG now: the client library reads it once, at import time.
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


def authorization_header(cfg: Any) -> str | None:
    """The ``Authorization`` value the kubernetes client itself would send.

    The client keeps tokens under ``BearerToken`` (aliased ``authorization``);
    asking through ``auth_settings`` also runs its refresh hook, so rotated
    ServiceAccount tokens and expiring exec/OIDC tokens stay fresh.
    """
    setting = cfg.auth_settings().get("BearerToken")
    value = setting.get("value") if setting else None
    return str(value) if value else None


@dataclass
class Kube:
    """Async JSON access to the API server; one per operator process (or per test)."""

    configuration: Configuration
    requests: Counter[str] = field(default_factory=Counter)
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> Kube:
        return cls(load_configuration(kubeconfig))

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.configuration
        if not cfg.host.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return ctx

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=100)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Obj | list[Obj] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API call; raise :class:`ApiError` on a non-2xx answer."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = authorization_header(self.configuration)
        if token:
            headers["Authorization"] = token
        url = self.configuration.host.rstrip("/") + path
        if params:
            url += "?" + urlencode(params)
        self.requests[method] += 1
        session = await self.session()
        data = json.dumps(body) if body is not None else None
        async with session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = status.get("reason", ""), status.get("message", text)
                except json.JSONDecodeError:
                    reason, message = "", text
                raise ApiError(resp.status, reason, message)
            return json.loads(text) if text else {}

    # --- typed conveniences -------------------------------------------------
    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", res.path(namespace, name))

    async def get_or_none(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self.get(res, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def list(self, res: Resource, namespace: str | None, *, label_selector: str | None = None) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else None
        return list((await self.request("GET", res.path(namespace), params=params)).get("items", []))

    async def create(self, res: Resource, namespace: str | None, body: Obj) -> Obj:
        return await self.request("POST", res.path(namespace), body=body)

    async def create_or_get(self, res: Resource, namespace: str | None, body: Obj) -> tuple[Obj, bool]:
        """Create; if the name exists (a repeated action after a restart), return the existing one."""
        try:
            return await self.create(res, namespace, body), True
        except ApiError as exc:
            if not exc.conflict:
                raise
            return await self.get(res, namespace, body["metadata"]["name"]), False

    async def delete(self, res: Resource, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.request("DELETE", res.path(namespace, name), body={"propagationPolicy": propagation})
            return True
        except ApiError as exc:
            if exc.not_found:
                return False
            raise

    async def merge_patch(
        self, res: Resource, namespace: str | None, name: str, patch: Obj, *, subresource: str | None = None
    ) -> Obj:
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def replace_status(self, res: Resource, namespace: str | None, obj: Obj) -> Obj:
        """PUT the status subresource; the object's resourceVersion makes it conditional."""
        return await self.request("PUT", res.path(namespace, obj["metadata"]["name"], "status"), body=obj)

    async def has_resource(self, res: Resource) -> bool:
        """Whether a kind is served, e.g. TrainJob when Kubeflow Trainer is installed.

        Asks API discovery (readable by every authenticated user), not the CRD
        itself, so the operator needs no cluster-wide RBAC on CRDs.
        """
        try:
            found = await self.request(
                "GET", f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
            )
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return any(r.get("name") == res.plural for r in found.get("resources", []))


async def mutate_status(
    kube: Kube,
    res: Resource,
    *,
    namespace: str,
    name: str,
    mutate: StatusMutation,
    attempts: int = 10,
    on_conflict: Callable[[int], Awaitable[None]] | None = None,
) -> Obj | None:
    """Optimistic-concurrency update of ``status``: GET → ``mutate`` → PUT, retried on 409.

    ``mutate`` receives a private deep copy of the whole object as read and
    returns the new ``status`` dict, or ``None`` to leave the object alone.
    It must be pure (it may run several times, each time against fresher
    state).  Returns the object as written, the object as read when nothing
    changed, or ``None`` if the object does not exist.
    """
    for attempt in range(1, attempts + 1):
        obj = await kube.get_or_none(res, namespace, name)
        if obj is None:
            return None
        status = mutate(copy.deepcopy(obj))
        if status is None or status == obj.get("status"):
            return obj
        body = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": obj.get("spec", {}),
            "status": status,
        }
        try:
            return await kube.replace_status(res, namespace, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            log.debug("status of %s/%s changed under us (attempt %d); retrying", namespace, name, attempt)
            if on_conflict is not None:
                await on_conflict(attempt)
            else:
                await asyncio.sleep(0)
    raise ConflictRetriesExhausted(
        f"{res.plural} {namespace}/{name}: status still conflicting after {attempts} attempts"
    )
