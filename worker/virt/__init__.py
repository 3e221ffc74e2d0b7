"""The hypervisor side: the only package that imports libvirt or runs qemu-img."""
