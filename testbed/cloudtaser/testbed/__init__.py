"""The local test bed: a real stack (etcd, kube-apiserver, OpenBao, OPA, a registry) and a real
node (kubelet, containerd, runc) on this machine, and the chart installed on it.

Not part of the product: no product room imports it (.importlinter, "testbed"). The ``cloudtaser
stack`` commands come from here through the ``cloudtaser.commands`` entry point.
"""
