"""Dispatch, in-flight records, ordering, journal, state watch; no kombu, libvirt or handlers."""
