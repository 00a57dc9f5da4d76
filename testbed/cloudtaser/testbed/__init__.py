"""The local test bed: a real stack (etcd, kube-apiserver, OpenBao, OPA, a registry) and a real
node (kubelet, containerd, runc) on this machine, and the chart installed on it.

Not part of the product: the wheel leaves it out, and no product room imports it (.importlinter,
"testbed"). In a development checkout (scripts/setup puts testbed/ on sys.path) the CLI adds its
``cloudtaser stack`` commands by name.
"""
