"""A throwaway Kubernetes control plane (etcd + kube-apiserver) for the e2e tests."""
