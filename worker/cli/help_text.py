"""The examples under each subcommand's --help, and the version --version prints."""

from __future__ import annotations

import importlib.metadata

DIST = "compute-worker"


def package_version() -> str:
    """The installed distribution's version (setup.cfg's), or why there is none."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "(not installed: pip install . to give it a version)"


RUN = """examples:
  compute-worker run --config /etc/compute-worker/compute-worker.conf
  compute-worker run --virt-type qemu --transport-url amqp://nova:PASSWORD@rabbit:5672//
  compute-worker run --rabbit-quorum-queue \
      --transport-url rabbit://nova:PW@rabbit1:5672,nova:PW@rabbit2:5672,nova:PW@rabbit3:5672/
  COMPUTE_WORKER_HOST=compute-01 compute-worker run --log-level debug

Stops on SIGTERM or SIGINT: running verbs get --grace seconds, unstarted ones go back
to the queue."""
CHECK = """examples:
  compute-worker check --config /etc/compute-worker/compute-worker.conf
  compute-worker check --transport-url amqp://nova:PASSWORD@rabbit:5672// --virt-type test
  compute-worker check --transport-url rabbit://nova:PW@rabbit1,nova:PW@rabbit2,nova:PW@rabbit3/

One line per check, ok, WARN or FAIL; each WARN and FAIL is followed by a line saying how
to fix it. On a cluster URL every node is asked: one down is a WARN (the worker runs on the
others), nodes of two clusters a FAIL. Exit status 0 when no check fails, 1 otherwise."""
DEMO = """examples:
  compute-worker demo

Needs no broker and no libvirtd: kombu's in-memory transport and libvirt's test driver."""
TOP = """examples:
  compute-worker top                          # this host (the host option, or the hostname)
  compute-worker top --host compute-01 --host compute-02
  compute-worker top --all                    # every host whose events arrive: the fleet

Keys: q quits (Ctrl-C too). Rows start from each host's list_instances (a host of
the fleet when it is first heard from) and follow the events: TASK is the verb
running now, LAST the last event and AGO how long ago it came."""
