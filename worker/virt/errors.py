"""libvirt errors to the project's own: the one place that reads libvirt error codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt

from worker.errors import HypervisorError, HypervisorUnavailable, InstanceNotFound, WorkerError

# libvirt prints every error to stderr unless a handler is installed; ours is
# silent because each error is raised to the caller and logged there once.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_BROKEN_DOMAINS = (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC)
_BROKEN_CODES = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR)
# A call this driver (or this QEMU) cannot make at all: libvirt's test driver has no
# blockCopy, for one.
_UNSUPPORTED_CODES = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                      libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)


def is_connection_error(exc: libvirt.libvirtError) -> bool:
    """True when the error means the connection is gone, not that the call failed."""
    code, domain = exc.get_error_code(), exc.get_error_domain()
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
        return True
    return code in _BROKEN_CODES and domain in _BROKEN_DOMAINS


def unsupported(error: WorkerError) -> bool:
    """True when a translated error says the driver cannot do the call, not that it failed."""
    return isinstance(error, HypervisorError) and error.code in _UNSUPPORTED_CODES


def translate(exc: libvirt.libvirtError, uuid: str | None = None) -> WorkerError:
    """Map one libvirt error to a WorkerError."""
    if is_connection_error(exc):
        return HypervisorUnavailable(str(exc.get_error_message()))
    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and uuid is not None:
        return InstanceNotFound(uuid)
    return HypervisorError(str(exc.get_error_message()), exc.get_error_code())


@contextlib.contextmanager
def libvirt_errors(uuid: str | None = None) -> Iterator[None]:
    """Turn libvirt errors raised inside the block into WorkerErrors."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, uuid) from None
