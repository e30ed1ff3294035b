"""VpcConfig: a job's hosts on a private subnet without NAT, with an S3 gateway endpoint.

On SageMaker a job with VpcConfig gets network interfaces in the customer's subnets; in the setup the
developer guide describes for a private subnet ("Give SageMaker AI Training Jobs Access to Resources in Your
Amazon VPC", docs.aws.amazon.com/sagemaker/latest/dg/train-vpc.html: without a NAT gateway the containers have
no internet access, and "they can't connect to the Amazon S3 buckets that contain your training data unless
you create a VPC endpoint"), the hosts reach each other and, through the S3 gateway endpoint, S3, and nothing
else. smlocal makes that network here, whatever Subnets and SecurityGroupIds say (there is no VPC to look them
up in):

- the job's network is internal, with no address of this machine on it (`Backend.create_network(internal=True)`,
  as for EnableNetworkIsolation): no route out, and this host does not answer on any port;
- one more container, the job's S3 gateway (`S3_GATEWAY_IMAGE`: a static busybox, imported from the machine's
  busybox-static the first time, as `make images` makes its busybox image; nothing is pulled), sits on the job's
  network at the subnet's last address and on Docker's default bridge. It forwards one TCP port, the S3
  endpoint's, to that endpoint and nothing else (busybox `nc -ll -e`), with IP forwarding off in its namespace;
- the job's containers resolve the endpoint's host name (`host.docker.internal`, smlocal's alias for this
  host) to the gateway, so AWS_ENDPOINT_URL_S3 / S3_ENDPOINT_URL are the same URL as for any job and the
  requests reach the store as sent (Host header and signature intact). An endpoint given as an IP address
  (`--container-s3-endpoint`) is given to VPC jobs under that alias instead (`vpc_endpoint`).

The gateway carries the job's labels (`LABEL_ROLE` tells it from a host), so the job's cleanup and the
recovery sweep remove it with the job's containers, and recovery never takes it for a host. When there is
no static busybox (or no S3 endpoint), the job runs on its private subnet without the endpoint, as a VPC
without one would, and its log says why.

EnableNetworkIsolation is stricter and wins: no gateway, the store unreachable (runner.networks).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import shutil
import struct
import tarfile
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runner.backend import Backend, ContainerSpec, NetworkRef
from runner.host_address import HOST_ALIAS
from smlocal.core.jobspec import JobSpec

log = logging.getLogger("smlocal.runner")

S3_GATEWAY_IMAGE = "smlocal/s3-gateway:1"
# On the gateway container, beside the job's labels: it is no host of the job.
LABEL_ROLE = "smlocal.role"
S3_GATEWAY_ROLE = "s3-gateway"
GATEWAY_HOST = "s3-gateway"
# Where Debian's busybox-static puts it (scripts/ensure-docker.sh installs it), then the PATH.
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Each accepted connection runs this with the socket as stdin/stdout: one connection to the endpoint.
_FORWARD_SCRIPT = b'#!/bin/sh\nexec /bin/busybox nc "$UPSTREAM_HOST" "$UPSTREAM_PORT"\n'
_import_lock = threading.Lock()


class GatewayUnavailable(Exception):  # noqa: N818 - the job runs without the endpoint, and its log says why
    """No S3 gateway for this job; the message says why (a sentence without its final period)."""


def uses_vpc(spec: JobSpec) -> bool:
    """The job gets the private subnet with its S3 endpoint (VpcConfig, without the stricter isolation)."""
    return spec.vpc and not spec.network_isolation


def vpc_endpoint(endpoint: str) -> str:
    """The S3 endpoint a VPC job's containers are given: an IP address has no route from the private subnet,
    so it is replaced by the alias the gateway answers to."""
    parts = urlsplit(endpoint)
    try:
        ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return endpoint
    netloc = HOST_ALIAS if parts.port is None else f"{HOST_ALIAS}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def endpoint_target(endpoint: str) -> tuple[str, int]:
    """(host, port) of an endpoint URL, the port by its scheme when it names none."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parts.hostname:
        raise GatewayUnavailable(f"the S3 endpoint {endpoint} names no host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def gateway_address(network: NetworkRef) -> str:
    """The gateway's fixed address: the subnet's last (hosts take the first ones, runner.networks)."""
    if network.subnet is None:
        raise GatewayUnavailable("the job's network has no subnet of its own")
    return str(list(ipaddress.ip_network(network.subnet).hosts())[-1])


def _is_static_elf(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP): it runs in an otherwise empty image."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
                return False
            order = "<" if header[5] == 1 else ">"
            phoff, = struct.unpack_from(order + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from(order + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def static_busybox() -> Path | None:
    found = [Path(p) for p in BUSYBOX_CANDIDATES]
    on_path = shutil.which("busybox")
    if on_path:
        found.append(Path(on_path))
    return next((p for p in found if p.is_file() and _is_static_elf(p)), None)


def gateway_rootfs(busybox: Path) -> bytes:
    """The gateway image's whole file tree, as a tar: busybox, its `sh` and `nc`, the forward script."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in ("sh", "nc"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
            tar.addfile(info)
        info = tarfile.TarInfo("bin/s3-forward")
        info.size, info.mode = len(_FORWARD_SCRIPT), 0o755
        tar.addfile(info, io.BytesIO(_FORWARD_SCRIPT))
    return buffer.getvalue()


def ensure_gateway_image(backend: Backend) -> None:
    """The gateway's image, imported from this machine's static busybox when the engine lacks it."""
    with _import_lock:
        if backend.has_image(S3_GATEWAY_IMAGE):
            return
        busybox = static_busybox()
        if busybox is None:
            raise GatewayUnavailable("no statically linked busybox on this machine to make the endpoint's image "
                                     f"{S3_GATEWAY_IMAGE} from (install Debian's busybox-static)")
        log.info("importing %s from %s", S3_GATEWAY_IMAGE, busybox)
        backend.import_image(S3_GATEWAY_IMAGE, gateway_rootfs(busybox))


def start_gateway(backend: Backend, network: NetworkRef, labels: dict[str, str], endpoint: str | None,
                  name: str) -> dict[str, str]:
    """Start the job's S3 gateway on `network`; the names the job's containers resolve to it (name -> address).

    GatewayUnavailable when the job gets none. The container is labelled with the job's `labels` before it
    exists anywhere, so whatever happens next the job's cleanup finds it."""
    if not endpoint:
        raise GatewayUnavailable("smlocal gives containers no S3 endpoint")
    host, port = endpoint_target(endpoint)
    address = gateway_address(network)
    ensure_gateway_image(backend)
    gateway = backend.create(ContainerSpec(
        image=S3_GATEWAY_IMAGE, name=f"{name}-{GATEWAY_HOST}", network=network.name, host=GATEWAY_HOST,
        labels={**labels, LABEL_ROLE: S3_GATEWAY_ROLE}, environment={"UPSTREAM_HOST": host, "UPSTREAM_PORT": str(port)},
        # -ll: a persistent server, one child per connection (busybox nc's help: "use -ll with -e").
        entrypoint=["/bin/busybox", "nc", "-ll", "-p", str(port), "-e", "/bin/s3-forward"], command=None,
        address=address, uplink="bridge",
        # Not a router for the job's containers, whatever the engine's default (they have no route to it anyway).
        sysctls={"net.ipv4.ip_forward": "0"},
    ))
    backend.start(gateway)
    return {urlsplit(vpc_endpoint(endpoint)).hostname or host: address}
